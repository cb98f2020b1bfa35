"""PyTorch vs onnxruntime: network forward lines/s of one model on the same lines.

The checkpoint is exported to ONNX in a temporary directory (or ``--onnx`` names an existing
export of it); ``--lines`` synthetic test lines are rendered, preprocessed and batched as
``transcribe`` does (``--batch_size`` lines per batch, widths rounded up to 32). Both backends
run on ``--threads`` threads over all batches: ``--warmup`` untimed passes, then ``--runs``
timed passes, alternating PyTorch and onnxruntime so that machine noise hits both; the median
pass is printed. Decoding is excluded. The largest log-probability difference and the number
of lines whose greedy texts agree are printed too.

    .venv/bin/python benchmarks/onnx_speed.py --ckpt_path checkpoints/demo/last.ckpt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from htr_lightning.data.batching import collate_lines
from htr_lightning.data.synthetic import SyntheticLines
from htr_lightning.decoding import GreedyDecoder
from htr_lightning.inference.export import export_onnx
from htr_lightning.inference.runtime import OnnxRecognizer
from htr_lightning.models import load_system


def main() -> None:
    """Prints the setting, lines/s of each backend, their ratio and the agreement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--onnx", help="an existing export of the checkpoint (default: export now)")
    parser.add_argument("--lines", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_system(args.ckpt_path)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.onnx) if args.onnx else export_onnx(model, Path(tmp) / "model.onnx")
        runtime = OnnxRecognizer(path, threads=args.threads)

        lines = SyntheticLines(args.lines, split="test", seed=1)
        items = []
        for i, sample in enumerate(lines):
            image, width = model.preprocess(sample.load())
            items.append({"image": image, "width": width, "text": sample.text, "id": str(i)})
        batches = [collate_lines(items[i : i + args.batch_size])
                   for i in range(0, len(items), args.batch_size)]

        def run_torch():
            with torch.inference_mode():
                return [model(b["images"], b["widths"]) for b in batches]

        def run_onnx():
            return [runtime.forward(b["images"], b["widths"]) for b in batches]

        times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
        for i in range(args.warmup + args.runs):
            for name, run in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
                start = time.perf_counter()
                outputs = run()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                if name == "pytorch":
                    ref = outputs
                else:
                    got = outputs

    greedy = GreedyDecoder()
    diff = max(float((g[0] - r[0]).abs().max()) for g, r in zip(got, ref))
    same = sum(a.text == b.text
               for g, r in zip(got, ref)
               for a, b in zip(greedy(*g, model.tokenizer), greedy(*r, model.tokenizer)))
    widths = sorted(int(b["images"].shape[-1]) for b in batches)
    params = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}, {params:,} parameters, height {model.preprocess.height}; "
          f"{len(items)} lines in {len(batches)} batches of {args.batch_size} "
          f"(batch widths {widths[0]}-{widths[-1]} px); {args.threads} thread(s), "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    speed = {name: len(items) / statistics.median(t) for name, t in times.items()}
    for name, value in speed.items():
        print(f"{name:12s} {value:8.1f} lines/s")
    print(f"onnxruntime / pytorch: {speed['onnxruntime'] / speed['pytorch']:.2f}x; "
          f"max |log_probs difference| {diff:.1e}; same greedy text on {same}/{len(items)} lines")


if __name__ == "__main__":
    main()
