"""Teacher vs student: parameters and CPU inference lines/s (issue: knowledge-distilled student).

Batch 32 of 64-pixel-high lines, 1024 wide, greedy decoding excluded (network forward only),
median of ``--runs`` timed passes after ``--warmup`` untimed ones, teacher and student timed
alternately in the same process so machine noise hits both.

    .venv/bin/python benchmarks/student_speed.py [--runs 7] [--threads 2]
        [--pools '[[2,2],[2,2],[2,1],[2,1],null]']   # both nets at 4 px per frame
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from htr_lightning.nets import GatedCRNN
from htr_lightning.nets.gated_crnn import STUDENT_PRESET


def main() -> None:
    """Prints one line per model and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pools", type=json.loads, default=None,
                        help="JSON list, as --model.pools takes it; default: the presets' pools")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pools = {} if args.pools is None else {"pools": args.pools}
    nets = {"teacher": GatedCRNN(args.classes, **pools).eval(),
            "student": GatedCRNN(args.classes, **{**STUDENT_PRESET, **pools}).eval()}
    images = torch.rand(args.batch, 1, 64, args.width)
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            for name, net in nets.items():
                start = time.perf_counter()
                net(images)
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    print(f"batch {args.batch} x 1x64x{args.width}, {args.threads} thread(s), "
          f"{nets['teacher'].width_factors} width pools, "
          f"median of {args.runs} runs after {args.warmup} warm-up")
    speed = {}
    for name, net in nets.items():
        params = sum(p.numel() for p in net.parameters())
        speed[name] = args.batch / statistics.median(times[name])
        print(f"{name:8s} params {params:>10,}  lines/s {speed[name]:8.1f}  "
              f"(runs: {', '.join(f'{t:.3f}' for t in times[name])} s)")
    t_params = sum(p.numel() for p in nets["teacher"].parameters())
    s_params = sum(p.numel() for p in nets["student"].parameters())
    print(f"student/teacher params {s_params / t_params:.1%}, "
          f"student/teacher lines/s {speed['student'] / speed['teacher']:.2f}x")


if __name__ == "__main__":
    main()
