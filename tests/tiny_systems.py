"""Tiny system settings and a checkpoint writer shared by test modules (importable by name,
unlike ``conftest``, of which tests/ holds more than one)."""

import json
from pathlib import Path

import lightning
import torch

# A tiny teacher: the same class as the real one, a few hundred parameters per layer.
# Height 32 with the fourth pool on height only keeps 4 px of width per frame.
TINY_TEACHER = dict(
    height=32,
    channels=[4, 8, 8, 8, 8],
    pools=[[2, 2], [2, 2], [2, 1], [2, 1], None],
    lstm_hidden=8,
    lstm_layers=1,
    heads=1,
    se_reduction=2,
)


def save_cli_checkpoint(model, path):
    """Writes ``model`` as ``htr-lightning fit`` does: a Lightning checkpoint whose
    hyperparameters carry the class path the CLI stores. Returns ``path``."""
    cls = type(model)
    torch.save({"state_dict": model.state_dict(),
                "hyper_parameters": {**model.hparams,
                                     "_class_path": f"htr_lightning.models.{cls.__name__}",
                                     "_instantiator": "lightning.pytorch.cli.instantiate_module"},
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def tiny_teacher_cli_args() -> list[str]:
    """TINY_TEACHER as ``--model.<name>=<value>`` command-line arguments."""
    return [f"--model.{key}={json.dumps(value)}" for key, value in TINY_TEACHER.items()
            if key != "height"]


SYNTHETIC_TEACHER_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "teacher_synthetic.yaml"


def tiny_cli_args(tmp_path: Path) -> list[str]:
    """``htr-lightning`` arguments for a quiet run of the tiny teacher on tiny synthetic data,
    with its logs under ``tmp_path`` and its checkpoints in ``tmp_path / "ckpt"``."""
    return ["--config", str(SYNTHETIC_TEACHER_CONFIG), *tiny_teacher_cli_args(),
            "--data.height=32", "--data.batch_size=4", "--data.num_workers=0",
            '--data.synthetic_size={"train": 16, "val": 8, "test": 8}',
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=1", f"--trainer.default_root_dir={tmp_path}",
            f"--checkpoint.dirpath={tmp_path / 'ckpt'}"]


class Throttle(lightning.pytorch.Callback):
    """Sleeps after each training step, so that a subprocess run lasts long enough to be
    killed mid-epoch."""

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs) -> None:
        import time

        time.sleep(self.seconds)


class RecordBatches(lightning.pytorch.Callback):
    """Appends ``{"rank", "step", "ids"}`` of every training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"rank": trainer.global_rank, "step": trainer.global_step,
                                "ids": batch["ids"]}) + "\n")


def read_batches(path, rank: int = 0) -> dict[int, list[str]]:
    """What :class:`RecordBatches` wrote for one process: step -> line ids of the batch
    trained at that step (the latest record of a step wins: a resumed run repeats steps)."""
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    return {row["step"]: row["ids"] for row in rows if row["rank"] == rank}


class CrashAt(lightning.pytorch.Callback):
    """Raises after the training step that reaches ``step`` (before the checkpoint callbacks,
    which Lightning runs last, can save it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


class InValidation(lightning.pytorch.Callback):
    """Inside each validation after the sanity check: touches ``marker`` and sleeps before
    each batch, so that a subprocess run can be signalled mid-validation; with ``crash``,
    raises at its first batch instead."""

    def __init__(self, marker: str, seconds: float = 0.5, crash: bool = False) -> None:
        self.marker, self.seconds, self.crash = Path(marker), seconds, crash

    def on_validation_batch_start(self, trainer, *args, **kwargs) -> None:
        if trainer.sanity_checking:
            return
        if self.crash:
            raise RuntimeError("crash inside a validation")
        import time

        self.marker.touch()
        time.sleep(self.seconds)
