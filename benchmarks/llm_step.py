"""Training-step time with and without the LLM path (issue: LLM-augmented CTC).

Builds the model and data of a config exactly as ``htr-lightning fit`` would (default: the CPU
config ``configs/experiment/llm_tiny_synthetic.yaml``, whose tiny Llama
``examples/make_tiny_llama.py`` writes), loads the LM, and times full training steps
(forward, backward, AdamW step) on the same batches two ways, alternately in one process so
machine noise hits both: the best-practices losses alone (CTC + 0.1 shortcut) and those plus
the LM term on the sampled lines. Data loading is excluded (the batches are read first).

    python benchmarks/llm_step.py [--config ...] [--steps 15] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from htr_lightning.cli import HTRLightningCLI
from htr_lightning.data.datamodule import HTRDataModule
from htr_lightning.models import BestPracticesSystem
from htr_lightning.models.ctc_system import CTCSystem


def main() -> None:
    """Prints the median step time of both variants and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/experiment/llm_tiny_synthetic.yaml")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("overrides", nargs="*", help="extra CLI options, e.g. --model.llm=PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cli = HTRLightningCLI(CTCSystem, HTRDataModule, subclass_mode_model=True, run=False,
                          args=["--config", args.config, "--data.num_workers=0", *args.overrides])
    model, data = cli.model, cli.datamodule
    model.setup("fit")  # loads the LM, as fitting does
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(args.warmup + args.steps)]
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    variants = {
        "CTC + shortcut": lambda batch: BestPracticesSystem.training_losses(
            model, batch, *model.training_forward(batch)),
        "CTC + shortcut + LM": lambda batch: model.training_losses(batch, *model.training_forward(batch)),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i, batch in enumerate(batches):
        for name, losses in variants.items():
            start = time.perf_counter()
            loss = losses(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    hp = model.hparams
    b = len(batches[0]["texts"])
    print(f"{args.config}: batch {b} lines of {tuple(batches[0]['images'].shape[-2:])}, "
          f"{max(1, round(b * hp.llm_sample_ratio))} through the LM, {args.threads} thread(s), "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"params: CTC net {count(model.net):,}, connector {count(model.connector):,}, "
          f"LM {count(model.llm):,} ({sum(p.numel() for p in model.llm.parameters() if p.requires_grad):,} "
          "trainable adapters)")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:20s} {median[name] * 1000:8.1f} ms/step  (min {min(t) * 1000:.1f}, "
              f"max {max(t) * 1000:.1f})")
    with_lm, without = median["CTC + shortcut + LM"], median["CTC + shortcut"]
    print(f"LLM path: +{(with_lm - without) * 1000:.1f} ms/step, {with_lm / without:.2f}x")


if __name__ == "__main__":
    main()
