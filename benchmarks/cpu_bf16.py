"""Teacher training steps on the CPU: float32 against bf16 autocast (``--trainer.precision
bf16-mixed``), for users who train without a GPU.

One step is what ``TeacherSystem.training_step`` does to a batch: the network's forward under
the precision, the model's own CTC loss (``CTCSystem.ctc_loss``, float32 under mixed
precision too), backward and an AdamW step. Both settings start from the same weights and are timed
alternately in the same process, so machine noise hits both; medians of ``--runs`` steps after
``--warmup``. Also printed: how far the bf16 forward is from float32 on the same weights (the
largest difference of a log-probability and the relative difference of the CTC loss).

Whether it pays depends on the CPU: oneDNN runs bf16 convolutions and LSTMs natively on CPUs with
AVX512-BF16 or AMX (``lscpu | grep -o 'avx512_bf16\\|amx_bf16'``) and emulates them elsewhere.

    .venv/bin/python benchmarks/cpu_bf16.py [--runs 5] [--threads 2] [--width 1400]
        [--pools '[[2,2],[2,2],[2,1],[2,1],null]'] [--lstm_hidden 128] [--profile]

``--profile`` also runs one float32 step under ``torch.profiler`` and prints where its CPU
time went: the BiLSTM (oneDNN's RNN kernels), the convolutions, the rest.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from htr_lightning.models import TeacherSystem

# Self-CPU-time shares by kernel name; the first group whose word is in the name wins.
PROFILE_GROUPS = {"BiLSTM": ("rnn", "lstm"), "convolutions": ("convolution",)}


def ctc_loss(model: TeacherSystem, images: torch.Tensor, widths: torch.Tensor, texts: list[str],
             bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward under the precision and the model's CTC loss; returns (loss, log_probs)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        log_probs, lengths = model(images, widths)
        loss = model.ctc_loss(log_probs, lengths, texts, [str(i) for i in range(len(texts))])
    return loss, log_probs.float()


def main() -> None:
    """Prints the medians, the speed-up and the numerical differences."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=1400, help="line width at height 64 "
                        "(1,400 px is about a median Hooker line)")
    parser.add_argument("--text", type=int, default=60, help="characters per line")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--pools", type=json.loads, default=[[2, 2], [2, 2], [2, 1], [2, 1], None],
                        help="JSON list, as --model.pools takes it (default: 4 px per frame)")
    parser.add_argument("--lstm_hidden", type=int, default=128)
    parser.add_argument("--profile", action="store_true",
                        help="also profile one float32 step: CPU time by kind of kernel")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    charset = "".join(chr(33 + i) for i in range(args.classes - 1))  # + the CTC blank
    base = TeacherSystem(charset, pools=args.pools, lstm_hidden=args.lstm_hidden)
    nets = {"float32": base, "bf16-mixed": copy.deepcopy(base)}
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-4) for name, net in nets.items()}
    images = torch.rand(args.batch, 1, 64, args.width)
    widths = torch.full((args.batch,), args.width)
    texts = ["".join(charset[int(c)] for c in torch.randint(0, len(charset), (args.text,)))
             for _ in range(args.batch)]

    with torch.no_grad():
        loss32, lp32 = ctc_loss(base.eval(), images, widths, texts, bf16=False)
        loss16, lp16 = ctc_loss(base, images, widths, texts, bf16=True)
    base.train()

    times: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(args.warmup + args.runs):
        for name, net in nets.items():
            start = time.perf_counter()
            loss, _ = ctc_loss(net, images, widths, texts, bf16=name != "float32")
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    print(f"batch {args.batch} x 1x64x{args.width}, {args.text} characters per line, "
          f"{args.threads} thread(s), median of {args.runs} steps after {args.warmup} warm-up")
    medians = {}
    for name in nets:
        medians[name] = statistics.median(times[name])
        print(f"{name:10s} s/step {medians[name]:7.3f}  "
              f"(steps: {', '.join(f'{t:.2f}' for t in times[name])} s)")
    print(f"bf16-mixed speed-up: {medians['float32'] / medians['bf16-mixed']:.2f}x")
    print(f"same weights, eval mode: largest |log-prob difference| "
          f"{(lp32 - lp16).abs().max().item():.4f}, CTC loss {loss32.item():.4f} (float32) vs "
          f"{loss16.item():.4f} (bf16), relative difference "
          f"{abs(loss16.item() - loss32.item()) / loss32.item():.2e}")
    if args.profile:
        profile_step(base, optimizers["float32"], images, widths, texts)


def profile_step(net: TeacherSystem, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                 widths: torch.Tensor, texts: list[str]) -> None:
    """Prints the shares of one float32 step's self CPU time per ``PROFILE_GROUPS`` entry."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss, _ = ctc_loss(net, images, widths, texts, bf16=False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    shares = dict.fromkeys([*PROFILE_GROUPS, "the rest"], 0.0)
    for event in prof.key_averages():
        name = event.key.lower()
        group = next((g for g, words in PROFILE_GROUPS.items() if any(w in name for w in words)),
                     "the rest")
        shares[group] += event.self_cpu_time_total
    total = sum(shares.values())
    print("one float32 step, self CPU time: " + ", ".join(
        f"{group} {100 * t / total:.0f} %" for group, t in shares.items()))


if __name__ == "__main__":
    main()
