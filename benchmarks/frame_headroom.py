"""Greedy CER by frame headroom: does a CTC model have enough frames for the text of each line?

CTC can emit at most one symbol per frame, and needs a blank between two equal neighbours, so a
line whose text needs more than its frames (``len + repeated neighbours``) cannot be transcribed
in full whatever the training; lines near that limit are hard too. The frames per line follow
from the input width at the model's height and the network's width pooling (8 px per frame for
the teacher). This script runs a checkpoint over a split once and prints, per bin of
``needed / frames``: the lines, their share of the split's characters, their greedy CER and the
CER points they contribute to the split's total, plus the errors no decoder can avoid (the
symbols beyond the frames). Use it on your own data before choosing the height and pools.
``--bin_px 8`` bins by the frames a line would have at 8 px per frame, whatever the model's own
pooling, so that a 4-px model and an 8-px model are compared on the same groups of lines.

    .venv/bin/python benchmarks/frame_headroom.py --config configs/experiment/teacher_hooker.yaml \\
        --ckpt_path checkpoints/teacher_hooker/best.ckpt --split test
"""

from __future__ import annotations

import argparse

import torch

from htr_lightning.decoding import GreedyDecoder
from htr_lightning.decoding.lm_cli import datamodule_from_config, split_outputs
from htr_lightning.metrics import ErrorRate
from htr_lightning.models import load_system
from htr_lightning.models.ctc_system import ctc_min_frames

BINS = (0.5, 0.75, 0.9, 1.0, float("inf"))


def main() -> None:
    """Prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML (its data section)")
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--bin_px", type=int, default=None,
                        help="bin by the frames at this many px per frame (a multiple of the "
                             "model's); default: the model's own frames")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = load_system(args.ckpt_path)
    dm = datamodule_from_config(args.config, height=model.hparams.height)
    # The network's px per frame, from its own frame arithmetic on a wide line.
    model_px = 4096 // int(model.net.output_lengths(torch.tensor([4096])))
    bin_px = args.bin_px or model_px
    if bin_px % model_px:
        parser.error(f"--bin_px {bin_px} is not a multiple of the model's {model_px} px per frame")
    outputs = split_outputs(model, dm, args.split)
    greedy = GreedyDecoder()
    rows = []  # (needed / frames at bin_px, prediction, reference, symbols beyond its own frames)
    for log_probs, lengths, texts in outputs:
        for hyp, frames, text in zip(greedy(log_probs, lengths, model.tokenizer), lengths.tolist(), texts):
            need = ctc_min_frames(model.tokenizer.encode(text))
            bin_frames = max(1, frames // (bin_px // model_px))
            rows.append((need / bin_frames, hyp.text, text, max(0, need - frames)))

    def counts(chosen: list[tuple]) -> tuple[int, int]:
        """Character errors and reference characters of some lines, as val_cer counts them."""
        cer = ErrorRate("char")
        cer.update([r[1] for r in chosen], [r[2] for r in chosen])
        return int(cer.errors), int(cer.total)

    total_errors, total_chars = counts(rows)
    print(f"{args.split}: {len(rows)} lines, {total_chars} characters, greedy CER "
          f"{100 * total_errors / total_chars:.2f} %; {model_px} px per frame, binned at {bin_px}")
    print("needed/frames | lines | share of chars | CER of these lines | CER points of the split")
    low = 0.0
    for high in BINS:
        chosen = [r for r in rows if low < r[0] <= high]
        errors, chars = counts(chosen)
        label = f"> {low:.2f}" if high == float("inf") else f"{low:.2f}-{high:.2f}"
        cer = f"{100 * errors / chars:.2f} %" if chars else "-"
        print(f"{label} | {len(chosen)} | {100 * chars / total_chars:.1f} % | {cer} | "
              f"{100 * errors / total_chars:.2f}")
        low = high
    unavoidable = sum(r[3] for r in rows)
    print(f"symbols beyond the frames (errors no decoder can avoid): {unavoidable}, "
          f"{100 * unavoidable / total_chars:.2f} CER points")


if __name__ == "__main__":
    main()
