"""``htr-lightning-lm``: train a character n-gram LM on a split, and tune its fusion weights.

    htr-lightning-lm train --config configs/experiment/teacher_hooker.yaml --order 6 \\
        --output checkpoints/hooker_char6.arpa
    htr-lightning-lm tune --config configs/experiment/teacher_hooker.yaml \\
        --ckpt_path checkpoints/teacher_hooker/best.ckpt --lm checkpoints/hooker_char6.arpa

``--config`` is the experiment YAML whose ``data`` section names the dataset (the same file
``htr-lightning fit`` used), so the LM sees exactly the training transcriptions;
``--reader_options`` (JSON) replaces its ``data.reader_options``, as ``--data.reader_options``
did for ``fit``. ``tune`` runs the network once over the split and then decodes the saved
outputs for every LM weight and insertion bonus of the grid, printing CER, WER and lines/s of
each, greedy and beam without LM first. PAGE-XML lines are cut as the checkpoint's training
lines were (straightened or not) unless the reader options say ``rectify``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch
import yaml

from htr_lightning.data import HTRDataModule
from htr_lightning.decoding.beam import BeamSearchDecoder
from htr_lightning.decoding.greedy import GreedyDecoder
from htr_lightning.decoding.ngram import CharNgramLM
from htr_lightning.metrics import ErrorRate
from htr_lightning.models import load_system
from htr_lightning.models.base import report_other_line_cut


def datamodule_from_config(config: str | Path, reader_options: dict | None = None,
                           **overrides) -> HTRDataModule:
    """The HTRDataModule of an experiment YAML's ``data`` section; ``reader_options``, where
    given, replaces the section's."""
    data = (yaml.safe_load(Path(config).read_text()) or {}).get("data") or {}
    if reader_options is not None:
        data["reader_options"] = reader_options
    return HTRDataModule(**{**data, **overrides})


def cut_as_trained(dm: HTRDataModule, model) -> None:
    """Makes a PAGE-XML data module cut its lines as ``model`` trained on them (straightened or
    not) where its reader options leave ``rectify`` unset, as ``predict`` does; warns where they
    set it the other way, since the CER there is not the one the model can reach."""
    if dm.dataset == "pagexml" and "rectify" not in dm.reader_options:
        dm.reader_options["rectify"] = bool(model.rectified_lines)
    report_other_line_cut(model.rectified_lines, dm.rectified_lines, use="tuned on",
                          fix="set rectify in --reader_options")


def split_outputs(model, dm: HTRDataModule, split: str) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Runs the network over a split once: [(log_probs, lengths, texts)] per batch."""
    dm.setup({"val": "validate", "test": "test"}[split])
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    outputs = []
    with torch.inference_mode():
        for batch in loader:
            if batch["texts"]:
                log_probs, lengths = model(batch["images"], batch["widths"])
                outputs.append((log_probs, lengths, batch["texts"]))
    return outputs


def evaluate(decoder, outputs, tokenizer) -> tuple[float, float, float]:
    """CER, WER and decoding lines/s of a decoder on saved network outputs."""
    cer, wer = ErrorRate("char"), ErrorRate("word")
    lines, start = 0, time.perf_counter()
    for log_probs, lengths, texts in outputs:
        preds = [h.text for h in decoder(log_probs, lengths, tokenizer)]
        cer.update(preds, texts)
        wer.update(preds, texts)
        lines += len(texts)
    return float(cer.compute()), float(wer.compute()), lines / (time.perf_counter() - start)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``htr-lightning-lm``."""
    parser = argparse.ArgumentParser(prog="htr-lightning-lm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="estimate a character n-gram LM and save it as ARPA")
    train.add_argument("--config", required=True)
    train.add_argument("--reader_options", type=json.loads, default=None,
                       help="JSON: replaces the config's data.reader_options")
    train.add_argument("--split", default="train")
    train.add_argument("--order", type=int, default=6)
    train.add_argument("--smoothing", default="kneser-ney", choices=["kneser-ney", "witten-bell"])
    train.add_argument("--output", required=True)
    tune = sub.add_parser("tune", help="grid over LM weight and insertion bonus on a split")
    tune.add_argument("--config", required=True)
    tune.add_argument("--reader_options", type=json.loads, default=None,
                      help="JSON: replaces the config's data.reader_options")
    tune.add_argument("--ckpt_path", required=True)
    tune.add_argument("--lm", required=True)
    tune.add_argument("--split", default="val", choices=["val", "test"])
    tune.add_argument("--beam", type=int, default=16)
    tune.add_argument("--weights", type=_floats, default=[0.25, 0.5, 0.75, 1.0])
    tune.add_argument("--bonuses", type=_floats, default=[0.0, 0.5, 1.0, 2.0])
    args = parser.parse_args(argv)

    if args.command == "train":
        dm = datamodule_from_config(args.config, args.reader_options)
        texts = [s.text for s in dm.samples(args.split)]
        lm = CharNgramLM.train(texts, order=args.order, smoothing=args.smoothing)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        lm.save(args.output)
        print(f"{args.output}: order {args.order} {args.smoothing} LM from {len(texts)} "
              f"{args.split} lines, {len(lm.vocab)} symbols")
        return

    model = load_system(args.ckpt_path)
    dm = datamodule_from_config(args.config, args.reader_options, height=model.hparams.height,
                                augment=False)
    cut_as_trained(dm, model)
    outputs = split_outputs(model, dm, args.split)
    print(f"{args.split}: {sum(len(t) for _, _, t in outputs)} lines, beam {args.beam}")
    print(f"{'decoder':>34}  {'CER':>7}  {'WER':>7}  {'lines/s':>8}")
    rows = [("greedy", GreedyDecoder()), ("beam, no LM", BeamSearchDecoder(args.beam))]
    for weight, bonus in itertools.product(args.weights, args.bonuses):
        rows.append((f"beam + LM w={weight:g} bonus={bonus:g}",
                     BeamSearchDecoder(args.beam, lm_path=args.lm, lm_weight=weight,
                                       insertion_bonus=bonus)))
    for name, decoder in rows:
        cer, wer, speed = evaluate(decoder, outputs, model.tokenizer)
        print(f"{name:>34}  {cer:7.2%}  {wer:7.2%}  {speed:8.1f}")


if __name__ == "__main__":
    main()
