"""Does averaging the frame posteriors of several CTC checkpoints beat the best one?

Runs each checkpoint over a split once (``--config`` gives the data section), then decodes
greedily every combination of two or more checkpoints, averaged per frame in two ways:
the mean of the probabilities and the mean of the log-probabilities. Prints CER and WER per
single checkpoint and per combination. The checkpoints must share the charset and the width
pooling (the same number of frames per line).

    .venv/bin/python benchmarks/ctc_ensemble.py --config configs/experiment/teacher_hooker.yaml \\
        --ckpt_paths checkpoints/gpu_drop/best.ckpt checkpoints/gpu_plain/best.ckpt \\
        checkpoints/gpu_dropall/best.ckpt --splits val test

Independently trained CTC networks need not put a character's peak on the same frame, so a
frame-wise average can blur two peaks into none; this script measures whether it does.
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from htr_lightning.decoding.lm_cli import datamodule_from_config, evaluate, split_outputs
from htr_lightning.models import load_system


def average(log_probs: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Frame-wise average of (B, T, C) log-probabilities: of the probabilities, or of the logs
    (a geometric mean, renormalised per frame so that a beam search with an LM weighs it as a
    distribution; greedy decoding is the same either way)."""
    stacked = torch.stack(log_probs)
    if mode == "prob":
        return torch.logsumexp(stacked, 0) - math.log(len(log_probs))
    return stacked.mean(0).log_softmax(-1)


def average_outputs(members: list[list[tuple]], mode: str) -> list[tuple]:
    """Per batch, the frame-wise average of several members' saved [(log_probs, lengths, texts)]
    (their frame counts must agree); one member is returned as it is."""
    return [(average([b[0] for b in batches], mode) if len(members) > 1 else batches[0][0],
             batches[0][1], batches[0][2])
            for batches in zip(*members)]


def main() -> None:
    """Prints one row per checkpoint and per combination: CER and WER on each split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_paths", nargs="+", required=True)
    parser.add_argument("--splits", nargs="+", default=["val", "test"])
    args = parser.parse_args()
    if len(args.ckpt_paths) < 2:
        parser.error("--ckpt_paths needs two checkpoints or more")

    models = [load_system(p).eval() for p in args.ckpt_paths]
    first = models[0]
    for path, model in zip(args.ckpt_paths[1:], models[1:]):
        if model.tokenizer.charset != first.tokenizer.charset:
            parser.error(f"{path}: its charset differs from {args.ckpt_paths[0]}'s")
    outputs = {}  # (model index, split) -> [(log_probs, lengths, texts)] per batch
    for split in args.splits:
        for i, model in enumerate(models):
            dm = datamodule_from_config(args.config, height=model.hparams.height, augment=False)
            outputs[i, split] = split_outputs(model, dm, split)
            if i and any(a[1].tolist() != b[1].tolist()
                         for a, b in zip(outputs[0, split], outputs[i, split])):
                parser.error(f"{args.ckpt_paths[i]}: its frame counts differ from "
                             f"{args.ckpt_paths[0]}'s (another width pooling)")

    names = [str(i + 1) for i in range(len(models))]
    for i, path in enumerate(args.ckpt_paths):
        print(f"{names[i]}: {path}")
    print("| checkpoints | average | " + " | ".join(f"{s} CER | {s} WER" for s in args.splits) + " |")
    combos = [((i,), "-") for i in range(len(models))]
    combos += [(c, mode) for k in range(2, len(models) + 1)
               for c in itertools.combinations(range(len(models)), k) for mode in ("prob", "log")]
    for combo, mode in combos:
        cells = []
        for split in args.splits:
            combined = average_outputs([outputs[i, split] for i in combo], mode)
            cer, wer, _ = evaluate(first.decoder, combined, first.tokenizer)
            cells += [f"{100 * cer:.2f} %", f"{100 * wer:.2f} %"]
        print(f"| {'+'.join(names[i] for i in combo)} | {mode} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
