"""Does pretraining on synthetic lines help? Same number of steps, two ways, on Hooker.

- scratch: the light Hooker teacher (``configs/experiment/teacher_hooker_light.yaml``) trained
  ``--steps`` steps on the Hooker train split;
- pretrained: the same network trained ``--steps`` / 2 steps on synthetic lines, then
  fine-tuned ``--steps`` / 2 steps on Hooker from those weights (``--init.ckpt_path``; output
  rows matched by symbol, Hooker's extra symbols start fresh).

Each stage has its own one-cycle schedule over its steps. The final weights of each arm are
evaluated on the full Hooker val and test splits (greedy); the table gives CER, WER and the
wall time of the training.

    .venv/bin/python benchmarks/synthetic_pretraining.py --steps 800 --out checkpoints/pretraining

Arguments it does not know go to every stage's ``htr-lightning fit`` (e.g. ``--data.height 64``),
and ``--arms`` runs one arm only, so that the two can run side by side as two processes:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synthetic_pretraining.py --steps 3600 \
        --arms scratch --data.height 64 --out checkpoints/pretraining64    # and --arms pretrained
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from htr_lightning.cli import HTRLightningCLI, cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "teacher_hooker_light.yaml"


def fit(out: Path, steps: int, *overrides: str) -> tuple[HTRLightningCLI, float]:
    """Trains the light teacher ``steps`` steps; returns the CLI and the seconds of fitting."""
    sys.argv = ["htr-lightning"]  # LightningCLI also reads sys.argv
    cli = cli_main(run=False, args=[
        "--config", str(CONFIG), f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
        "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={out}",
        f"--checkpoint.dirpath={out}", *overrides])
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli, time.perf_counter() - start


def evaluate(cli: HTRLightningCLI) -> dict[str, float]:
    """Greedy CER/WER of the final weights on the full val and test splits."""
    trainer = type(cli.trainer)(logger=False, enable_progress_bar=False, enable_model_summary=False,
                                enable_checkpointing=False, accelerator="cpu")
    val = trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    test = trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    return {**val, **test}


def main() -> None:
    """Prints one row per arm: steps, training seconds, val/test CER and WER."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--steps", type=int, default=800, help="total training steps per arm")
    parser.add_argument("--root", default="../shared/data/hooker")
    parser.add_argument("--out", default="checkpoints/pretraining")
    parser.add_argument("--arms", nargs="+", choices=("scratch", "pretrained"),
                        default=["scratch", "pretrained"])
    args, overrides = parser.parse_known_args()
    out = Path(args.out)
    half = args.steps // 2
    hooker = [f"--data.root={args.root}", *overrides]
    rows = []

    if "scratch" in args.arms:
        scratch, scratch_s = fit(out / "scratch", args.steps, *hooker)
        rows.append(("scratch", f"{args.steps} Hooker", scratch_s, evaluate(scratch)))

    if "pretrained" in args.arms:
        _, synth_s = fit(out / "synthetic", half, *overrides, "--data.dataset=synthetic",
                         "--data.root=null", "--data.reader_options={}")
        tuned, tuned_s = fit(out / "finetuned", args.steps - half, *hooker,
                             f"--init.ckpt_path={out / 'synthetic' / 'last.ckpt'}")
        rows.append(("pretrained", f"{half} synthetic + {args.steps - half} Hooker",
                     synth_s + tuned_s, evaluate(tuned)))

    print("| arm | steps | training s | val CER | val WER | test CER | test WER |")
    print("|---|---|---|---|---|---|---|")
    for name, steps, seconds, m in rows:
        print(f"| {name} | {steps} | {seconds:.0f} | {m['val_cer']:.2%} | {m['val_wer']:.2%} | "
              f"{m['test_cer']:.2%} | {m['test_wer']:.2%} |")


if __name__ == "__main__":
    main()
