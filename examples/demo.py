"""`make demo`: train the CTC teacher on synthetic lines on CPU, test it, transcribe a few lines.

Runs the same commands a user would (``htr-lightning fit`` then ``test``), then loads the best
checkpoint the way a notebook does and prints references next to transcriptions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "experiment" / "teacher_synthetic.yaml"
OUT = ROOT / "checkpoints" / "demo"


def cli(*args: str) -> None:
    """Runs ``htr-lightning`` with this interpreter; stops the demo if it fails."""
    cmd = [sys.executable, "-m", "htr_lightning.cli", *args]
    print("$ htr-lightning " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> None:
    """Fit, test, transcribe."""
    from htr_lightning.data.synthetic import SyntheticLines
    from htr_lightning.metrics import ErrorRate
    from htr_lightning.models import TeacherSystem

    shutil.rmtree(OUT, ignore_errors=True)
    start = time.time()
    cli("fit", "--config", str(CONFIG), f"--checkpoint.dirpath={OUT}",
        "--trainer.enable_progress_bar=false")
    fit_minutes = (time.time() - start) / 60
    best = sorted(OUT.glob("best-*.ckpt"))[-1]
    cli("test", "--config", str(CONFIG), f"--ckpt_path={best}", f"--checkpoint.dirpath={OUT}",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false")

    model = TeacherSystem.load_from_checkpoint(best, map_location="cpu")
    # Lines the model has never seen (another seed), drawn like the config's data.
    options = yaml.safe_load(CONFIG.read_text())["data"]["reader_options"]
    lines = SyntheticLines(8, split="test", seed=12345, **options)
    cer = ErrorRate("char")
    print("\nTranscriptions of freshly generated lines (reference -> prediction):")
    for sample, hyp in zip(lines, model.transcribe([s.load() for s in lines])):
        cer.update([hyp.text], [sample.text])
        print(f"  {sample.text!r:40} -> {hyp.text!r}  (confidence {hyp.confidence:.2f})")
    print(f"\nCER on these {len(lines)} lines: {float(cer.compute()):.1%}")
    print(f"Training took {fit_minutes:.1f} min on CPU; best checkpoint: {best.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
