"""Do the averaged weights of a run beat its raw weights at the same step?

A checkpoint written during a fit with Lightning's weight averaging (``--trainer.callbacks+=
lightning.pytorch.callbacks.EMAWeightAveraging``) holds both: the averaged weights as its
``state_dict`` and the raw ones as ``current_model_state``. The raw weights follow exactly
the trajectory of the same run without averaging (the callback only swaps weights in for
validation), so the two columns are a paired comparison. Greedy decoding, like the recipe's
figures. Prints one row per checkpoint: its step, then CER and WER per split for each.

    .venv/bin/python benchmarks/weight_averaging.py --config configs/experiment/teacher_hooker.yaml \\
        --reader_options '{"cache_dir": ".cache/hooker", "rectify": true}' \\
        --ckpt_paths checkpoints/wide_rect/snapshots/*.ckpt --splits val
"""

from __future__ import annotations

import argparse
import json

from htr_lightning.checkpoints import load_checkpoint_file
from htr_lightning.decoding.lm_cli import cut_as_trained, datamodule_from_config, evaluate, split_outputs
from htr_lightning.models import load_system


def main() -> None:
    """Prints a table: checkpoint, step, then averaged and raw CER/WER per split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--ckpt_paths", nargs="+", required=True)
    parser.add_argument("--splits", nargs="+", default=["val"])
    parser.add_argument("--reader_options", type=json.loads, default=None,
                        help="JSON: replaces the config's data.reader_options")
    args = parser.parse_args()

    header = ["checkpoint", "step"] + [f"{kind} {s} {m}" for s in args.splits
                                       for kind in ("averaged", "raw") for m in ("CER", "WER")]
    print("| " + " | ".join(header) + " |")
    for path in args.ckpt_paths:
        checkpoint = load_checkpoint_file(path, weights_only=False)  # our own training files
        raw = checkpoint.get("current_model_state")
        if raw is None:
            print(f"| {path} | {checkpoint.get('global_step')} | no current_model_state: "
                  "not written with weight averaging |")
            continue
        model = load_system(path, weights_only=False)
        dm = datamodule_from_config(args.config, args.reader_options,
                                    height=model.hparams.height, augment=False)
        cut_as_trained(dm, model)
        cells = []
        for split in args.splits:
            for state in (checkpoint["state_dict"], raw):
                model.load_state_dict(state)
                outputs = split_outputs(model, dm, split)
                cer, wer, _ = evaluate(model.decoder, outputs, model.tokenizer)
                cells += [f"{100 * cer:.2f} %", f"{100 * wer:.2f} %"]
        row = [str(path), str(checkpoint.get("global_step")), *cells]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
