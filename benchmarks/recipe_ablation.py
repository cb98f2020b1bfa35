"""Input height and augmentation on Hooker, chosen by experiment: one grid, same steps per arm.

Each arm is the light Hooker teacher (``configs/experiment/teacher_hooker_light.yaml``, same
channels and LSTMs) trained ``--steps`` steps from scratch on the Hooker train split at one
input height, with training augmentation (:class:`htr_lightning.data.LineAugment`) on or off.
The width pools scale with the height so that every arm emits one CTC frame per height/16
pixels of width (2 px at height 32, 3 at 48, 4 at 64): each frame sees the same share of a
letter whatever the height, so the arms differ in resolution, not in frame headroom. The
final weights of each arm are evaluated greedily on the full val and test splits.

Each finished arm writes ``<out>/<arm>/result.json`` and is skipped on a rerun, so a grid that
a session end interrupts goes on where it stopped.

    .venv/bin/python benchmarks/recipe_ablation.py --steps 1800 --heights 64,48,32   # README's grid
    .venv/bin/python benchmarks/recipe_ablation.py --steps 1800 --heights 96,128 --augment off   # its taller arms
    .venv/bin/python benchmarks/recipe_ablation.py --steps 1800 --heights 64 --augment off --seed 1   # another seed

``--seed`` (default 0, the README's grid) seeds the initial weights and the batch order; arms
of another seed go to ``<arm>_seed<N>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# The fit/evaluate pair of the pretraining benchmark (same directory, so importable when run
# as a script): the same light teacher, trained and evaluated the same way.
from synthetic_pretraining import evaluate, fit


def pools_for(height: int) -> list[list[int] | None]:
    """Five pools for the light teacher at ``height``: height / 16 in total and a width
    reduction of height / 16, spread over the first blocks as its prime factors."""
    if height % 16:
        raise ValueError(f"height {height} is not a multiple of 16")
    k, factors, p = height // 16, [], 2
    while k > 1:
        while k % p == 0:
            factors.append(p)
            k //= p
        p += 1
    if len(factors) > 4:
        raise ValueError(f"height {height}: width reduction {height // 16} needs more than 4 pools")
    widths = factors + [1] * (4 - len(factors))
    return [[2, w] for w in widths] + [None]


def main() -> None:
    """Runs the arms not yet done and prints one row per arm of the grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600, help="training steps per arm")
    parser.add_argument("--heights", default="32,48,64", help="comma-separated input heights")
    parser.add_argument("--augment", default="off,on", help="comma-separated: off, on")
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of every arm")
    parser.add_argument("--root", default="../shared/data/hooker")
    parser.add_argument("--out", default="checkpoints/recipe_ablation")
    args = parser.parse_args()
    out = Path(args.out)
    # Both lists are checked before any arm trains: a typo must not surface after hours of fitting.
    grid = [(int(h), pools_for(int(h))) for h in args.heights.split(",")]
    augments = args.augment.split(",")
    for aug in augments:
        if aug not in ("off", "on"):
            raise SystemExit(f"--augment: {aug!r} is neither 'off' nor 'on'")
    rows = []
    for height, pools in grid:
        for aug in augments:
            arm = out / (f"h{height}_aug_{aug}" + (f"_seed{args.seed}" if args.seed else ""))
            done = arm / "result.json"
            if done.exists():
                result = json.loads(done.read_text())
            else:
                cli, seconds = fit(arm, args.steps, f"--data.root={args.root}",
                                   f"--data.height={height}", f"--model.pools={json.dumps(pools)}",
                                   f"--data.augment={aug == 'on'}", f"--seed_everything={args.seed}")
                result = {"height": height, "augment": aug, "seed": args.seed, "pools": pools, "steps": args.steps,
                          "seconds": seconds, **evaluate(cli)}
                done.write_text(json.dumps(result, indent=1))
            rows.append(result)
            print(json.dumps(result), flush=True)

    print("| height | px per frame | augment | seed | steps | training s | val CER | val WER | test CER | test WER |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        # Results written before --seed existed were all seed 0.
        print(f"| {r['height']} | {r['height'] // 16} | {r['augment']} | {r.get('seed', 0)} | {r['steps']} | "
              f"{r['seconds']:.0f} | "
              f"{r['val_cer']:.2%} | {r['val_wer']:.2%} | {r['test_cer']:.2%} | {r['test_wer']:.2%} |")


if __name__ == "__main__":
    main()
