"""Decoding lines/s: greedy and beam 4/16, with and without a character LM, on one core.

Two inputs: the saved outputs of a trained model over a split (``--ckpt_path`` + ``--config``,
the network is run once and not timed), and random log-probabilities (T=128, 80 classes), the
worst case for pruning. Each decoder is timed over the whole set ``--runs`` times; the median
is printed. PAGE-XML lines are cut as the checkpoint trained (straightened or not);
``--reader_options`` (JSON) replaces the config's ``data.reader_options``.

    .venv/bin/python benchmarks/decoding_speed.py --config configs/experiment/teacher_synthetic.yaml \\
        --ckpt_path checkpoints/demo/last.ckpt --lm checkpoints/synthetic_char6.arpa --split test
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from htr_lightning.decoding import BeamSearchDecoder, GreedyDecoder
from htr_lightning.decoding.lm_cli import cut_as_trained, datamodule_from_config, split_outputs
from htr_lightning.models import load_system
from htr_lightning.text import CTCTokenizer


def lines_per_second(decoder, outputs, tokenizer, runs: int) -> float:
    """Median lines/s of ``decoder`` over all batches of ``outputs``."""
    lines = sum(lp.shape[0] for lp, _ in outputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for log_probs, lengths in outputs:
            decoder(log_probs, lengths, tokenizer)
        times.append(time.perf_counter() - start)
    return lines / statistics.median(times)


def main() -> None:
    """Prints a table: input, decoder, lines/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--reader_options", type=json.loads, default=None,
                        help="JSON: replaces the config's data.reader_options")
    parser.add_argument("--lm", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--lm_weight", type=float, default=0.5)
    parser.add_argument("--bonus", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--random_lines", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_system(args.ckpt_path)
    dm = datamodule_from_config(args.config, args.reader_options, height=model.hparams.height,
                                augment=False)
    cut_as_trained(dm, model)
    model_outputs = [(lp, n) for lp, n, _ in split_outputs(model, dm, args.split)]
    classes = 80
    g = torch.Generator().manual_seed(0)
    random_outputs = [(torch.randn(args.random_lines, 128, classes, generator=g).log_softmax(-1),
                       torch.full((args.random_lines,), 128))]
    random_tok = CTCTokenizer("".join(chr(0x21 + i) for i in range(classes - 1)))

    decoders = [("greedy", GreedyDecoder())]
    for beam in (4, 16):
        decoders.append((f"beam {beam}", BeamSearchDecoder(beam)))
        decoders.append((f"beam {beam} + LM", BeamSearchDecoder(
            beam, lm_path=args.lm, lm_weight=args.lm_weight, insertion_bonus=args.bonus)))
    frames = [int(n) for _, lengths in model_outputs for n in lengths]
    print(f"model outputs: {len(frames)} {args.split} lines, median {statistics.median(frames):.0f} "
          f"frames, {model.tokenizer.charset.__len__() + 1} classes; random: "
          f"{args.random_lines} lines x 128 frames x {classes} classes; 1 thread, median of {args.runs}")
    print(f"{'decoder':>14}  {'model lines/s':>14}  {'random lines/s':>15}")
    for name, decoder in decoders:
        on_model = lines_per_second(decoder, model_outputs, model.tokenizer, args.runs)
        # the LM's charset is the model's; on random symbols it scores the unknown floor
        on_random = lines_per_second(decoder, random_outputs, random_tok, 1)
        print(f"{name:>14}  {on_model:14.1f}  {on_random:15.1f}")


if __name__ == "__main__":
    main()
