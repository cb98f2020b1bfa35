"""Does averaging one CTC checkpoint's frame posteriors over altered copies of each line help?

Runs the checkpoint over a split once per variant of the input batch, then decodes greedily
each variant alone and groups of them averaged per frame (the mean of the probabilities and
the mean of the log-probabilities, as ``ctc_ensemble.py`` does for several checkpoints).
Every variant keeps the image width, so the frame counts stay equal: vertical shifts and
scales, thicker and thinner strokes, gamma, and a shift of 2 px to the right (half a frame of
the 4-px teachers, the one variant that moves the frames).

    .venv/bin/python benchmarks/tta.py \\
        --config configs/experiment/teacher_hooker_wide.yaml \\
        --ckpt_path checkpoints/wide_rect_ft/best.ckpt --splits val

With ``--lm`` it also decodes the unaltered outputs and the averaged ``--group`` with beam search
and that character n-gram LM, over the grid of ``--weights`` and ``--bonuses``:

    .venv/bin/python benchmarks/tta.py --config configs/experiment/teacher_hooker_wide.yaml \\
        --ckpt_path checkpoints/wide_rect_ft/best.ckpt --splits val test \\
        --group "all but the right shift" --lm checkpoints/hooker_char6.arpa

The variants are tensor operations on the batch (ink 1, background 0) rather than
:class:`~htr_lightning.data.LineAugment`, which is random and works on PIL images per line.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

# The frame-wise averaging of the checkpoint-ensemble benchmark (same directory, so importable
# when run as a script).
from ctc_ensemble import average_outputs
from htr_lightning.decoding import BeamSearchDecoder
from htr_lightning.decoding.lm_cli import _floats, cut_as_trained, datamodule_from_config, evaluate
from htr_lightning.models import load_system


def shift(images: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """Moves the ink by dy rows (down if positive) and dx >= 0 columns to the right; the
    pixels moved in are background."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), dx:] = images[..., max(-dy, 0):h - max(dy, 0), :w - dx]
    return out


def vertical_scale(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Scales the lines vertically about their middle row, keeping height and width."""
    h = images.shape[-2]
    scaled_h = round(h * factor)
    scaled = F.interpolate(images, size=(scaled_h, images.shape[-1]), mode="bilinear",
                           align_corners=False)
    top = abs(h - scaled_h) // 2
    if scaled_h < h:
        return F.pad(scaled, (0, 0, top, h - scaled_h - top))
    return scaled[..., top:top + h, :]


VARIANTS = {
    "identity": lambda x: x,
    "up 2 px": lambda x: shift(x, dy=-2),
    "down 2 px": lambda x: shift(x, dy=2),
    "thicker": lambda x: F.max_pool2d(x, (3, 1), 1, (1, 0)),
    "thinner": lambda x: -F.max_pool2d(-x, (3, 1), 1, (1, 0)),
    "gamma 0.7": lambda x: x.clamp(0, 1) ** 0.7,
    "gamma 1.4": lambda x: x.clamp(0, 1) ** 1.4,
    "height x0.9": lambda x: vertical_scale(x, 0.9),
    "height x1.1": lambda x: vertical_scale(x, 1.1),
    "right 2 px": lambda x: shift(x, dx=2),
}
GEOMETRIC = ["identity", "up 2 px", "down 2 px", "height x0.9", "height x1.1"]
PHOTOMETRIC = ["identity", "thicker", "thinner", "gamma 0.7", "gamma 1.4"]
GROUPS = {
    "all": list(VARIANTS),
    "all but the right shift": [k for k in VARIANTS if k != "right 2 px"],
    "geometric": GEOMETRIC,
    "photometric": PHOTOMETRIC,
    "identity + right 2 px": ["identity", "right 2 px"],
}


def main() -> None:
    """Prints one row per variant and per averaged group: CER and WER on each split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument("--group", choices=list(GROUPS), default=None,
                        help="run only this group's variants (and report only it)")
    parser.add_argument("--mode", choices=["prob", "log"], default="log",
                        help="how --group is averaged for the beam + LM rows")
    parser.add_argument("--lm", default=None, help="ARPA file: adds beam + LM rows")
    parser.add_argument("--beam", type=int, default=16)
    parser.add_argument("--weights", type=_floats, default=[0.5, 1.0])
    parser.add_argument("--bonuses", type=_floats, default=[1.0, 2.0])
    args = parser.parse_args()
    if args.lm and not args.group:
        parser.error("--lm needs --group (the averaged variants to decode with it)")
    variants = {n: VARIANTS[n] for n in GROUPS[args.group]} if args.group else VARIANTS
    groups = {args.group: GROUPS[args.group]} if args.group else GROUPS

    model = load_system(args.ckpt_path).eval()
    outputs = {}  # (variant, split) -> [(log_probs, lengths, texts)] per batch
    for split in args.splits:
        dm = datamodule_from_config(args.config, height=model.hparams.height, augment=False)
        cut_as_trained(dm, model)
        dm.setup({"val": "validate", "test": "test"}[split])
        loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
        with torch.inference_mode():
            for batch in loader:
                if not batch["texts"]:
                    continue
                for name, alter in variants.items():
                    log_probs, lengths = model(alter(batch["images"]), batch["widths"])
                    outputs.setdefault((name, split), []).append(
                        (log_probs, lengths, batch["texts"]))

    def cells(names: list[str], mode: str, decoder=None) -> str:
        row = []
        for split in args.splits:
            merged = average_outputs([outputs[n, split] for n in names], mode)
            cer, wer, _ = evaluate(decoder or model.decoder, merged, model.tokenizer)
            row += [f"{100 * cer:.2f} %", f"{100 * wer:.2f} %"]
        return " | ".join(row)

    print("| variants | average | " + " | ".join(f"{s} CER | {s} WER" for s in args.splits) + " |")
    for name in variants:
        print(f"| {name} | - | {cells([name], '-')} |", flush=True)
    for group, names in groups.items():
        for mode in ("prob", "log"):
            print(f"| {group} | {mode} | {cells(names, mode)} |", flush=True)
    if args.lm:
        for weight in args.weights:
            for bonus in args.bonuses:
                decoder = BeamSearchDecoder(args.beam, lm_path=args.lm, lm_weight=weight,
                                            insertion_bonus=bonus)
                label = f"beam {args.beam} + LM w={weight:g} bonus={bonus:g}"
                print(f"| identity, {label} | - | {cells(['identity'], '-', decoder)} |",
                      flush=True)
                print(f"| {args.group}, {label} | {args.mode} | "
                      f"{cells(GROUPS[args.group], args.mode, decoder)} |", flush=True)


if __name__ == "__main__":
    main()
