"""End-to-end ``predict`` lines/s (files in, text out) against the bare network's forward.

Both run on the same line image files, in the same process, one after the other: first the
bare forward over batches that were read and preprocessed beforehand (untimed), then
``Trainer.predict`` with :class:`HTRDataModule` and the CLI's :class:`TranscriptionWriter`,
timed from the first file read to the last line written. Each is repeated ``--runs`` times and
the median is printed with the ratio.

    .venv/bin/python benchmarks/predict_speed.py --ckpt_path checkpoints/demo/last.ckpt \\
        --synthetic 256
    .venv/bin/python benchmarks/predict_speed.py --ckpt_path MODEL.ckpt --images DIR_OF_LINES
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from htr_lightning.cli import TranscriptionWriter
from htr_lightning.data import HTRDataModule
from htr_lightning.data.batching import collate_lines
from htr_lightning.data.datamodule import collect_images
from htr_lightning.data.synthetic import SyntheticLines
from htr_lightning.models import load_system


def bare_forward(model, files: list[str], batch_size: int, runs: int) -> float:
    """Median lines/s of the network alone on preprocessed batches (as predict builds them)."""
    items = [dict(zip(("image", "width"), model.preprocess(s.load())), text="", id=s.id)
             for s in collect_images(files)]
    batches = [collate_lines(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            for batch in batches:
                model(batch["images"], batch["widths"])
            times.append(time.perf_counter() - start)
    return len(items) / statistics.median(times)


def end_to_end(model, folder: str, n: int, batch_size: int, workers: int, runs: int,
               out: Path) -> float:
    """Median lines/s of ``Trainer.predict`` from files to a text file."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        data = HTRDataModule(dataset="synthetic", height=model.hparams.height,
                             charset=model.tokenizer.charset, predict_paths=[folder],
                             segment="none", batch_size=batch_size, num_workers=workers)
        trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[TranscriptionWriter(str(out))])
        trainer.predict(model, data, return_predictions=False)
        times.append(time.perf_counter() - start)
        written = len(out.read_text().splitlines())
        if written != n:
            raise RuntimeError(f"predict wrote {written} lines for {n} files")
    return n / statistics.median(times)


def main() -> None:
    """Prints bare forward lines/s, end-to-end predict lines/s and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--images", help="folder of line images (default: render synthetic lines)")
    parser.add_argument("--synthetic", type=int, default=256, help="synthetic lines to render")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    model = load_system(args.ckpt_path).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.images
        if folder is None:
            folder = str(Path(tmp) / "lines")
            Path(folder).mkdir()
            for i, sample in enumerate(SyntheticLines(args.synthetic, split="test", seed=1)):
                sample.load().save(Path(folder) / f"{i:05d}.png")
        files = [s.path for s in collect_images([folder])]
        bare = bare_forward(model, files, args.batch_size, args.runs)
        e2e = end_to_end(model, folder, len(files), args.batch_size, args.num_workers, args.runs,
                         Path(tmp) / "out.txt")
    print(f"{len(files)} line files, batch {args.batch_size}, {args.num_workers} loader worker(s), "
          f"{torch.get_num_threads()} torch threads, median of {args.runs}")
    print(f"bare forward      {bare:8.1f} lines/s")
    print(f"predict (files -> text) {e2e:8.1f} lines/s")
    print(f"ratio             {e2e / bare:8.2f}")


if __name__ == "__main__":
    main()
