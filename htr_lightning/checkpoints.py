"""Checkpoint files that survive crashes and are safe to open.

- :class:`SafeCheckpointIO` (a Lightning ``CheckpointIO`` plugin, installed by the CLI) writes
  every checkpoint to a temporary file in the target folder and renames it into place, so a
  kill during a write never leaves a half-written file under a checkpoint's name; and it reads
  checkpoints with ``torch.load(weights_only=True)`` unless the user opts out.
- :class:`LastCheckpoint` keeps ``last.ckpt`` fresh for ``--ckpt_path last``: after every
  validation, every few minutes and optionally every N steps, whether or not ``val_cer``
  improved.
- :class:`InitWeights` starts a run from another checkpoint's network weights (fine-tuning).
- :func:`load_checkpoint_file` is the one safe ``torch.load`` that everything else calls;
  :func:`load_hyperparameters` reads only the hyperparameters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger("htr_lightning")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs pickle (arbitrary code) to load and the user did not opt in."""


@contextlib.contextmanager
def refusing_pickle(path: str | os.PathLike, weights_only: bool | None) -> Iterator[bool]:
    """Around a ``torch.load`` of ``path``: yields whether to load with ``weights_only=True``
    (unless the caller said False), and turns torch's error for a genuine pickle that names
    code to run (a class or function: "Unsupported global") into an
    :class:`UnsafeCheckpointError` naming the file and the opt-in. Other errors (a file that is
    no pickle at all) pass unchanged.
    """
    safe = weights_only is not False
    try:
        yield safe
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if "Unsupported global" in line]
        if not (safe and lines):
            raise
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file holds objects that only pickle can rebuild "
            f"({lines[0]}), and unpickling can run arbitrary code. htr_lightning checkpoints never "
            "need it. If you trust where this file comes from, load it with weights_only=False "
            "(CLI: --weights_only false)."
        ) from None


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu",
                         weights_only: bool | None = None) -> dict:
    """``torch.load`` of a checkpoint, without pickle unless ``weights_only=False``.

    Args:
        path: The file.
        map_location: As for ``torch.load``.
        weights_only: None or True: tensors and plain values only (our checkpoints hold nothing
            else); False: full unpickling, for files you trust.

    Raises:
        UnsafeCheckpointError: naming the file, when it needs pickle and ``weights_only`` is not
            False.
    """
    with refusing_pickle(path, weights_only) as safe:
        return torch.load(path, map_location=map_location, weights_only=safe)


def load_hyperparameters(path: str | os.PathLike, weights_only: bool | None = None) -> dict:
    """The ``hyper_parameters`` of a checkpoint (``{}`` when it has none), without reading its
    weights: the file is memory-mapped, so only the tensors' metadata is read. A checkpoint
    that is about to be loaded in full anyway (``load_system``, ``--ckpt_path``) is then not
    read twice, which matters for a TrOCR-base checkpoint of more than a GB. Files in torch's
    legacy (non-zip) format cannot be mapped and are read in full.

    Raises:
        UnsafeCheckpointError: as :func:`load_checkpoint_file`.
    """
    with refusing_pickle(path, weights_only) as safe:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=safe, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=safe)
    return dict(checkpoint.get("hyper_parameters", {}))


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class SafeCheckpointIO(TorchCheckpointIO):
    """Atomic checkpoint writes and pickle-free reads.

    Lightning's own writer stages through an fsspec transaction whose temporary file lives in
    the system temp folder, so the final move can be a copy across file systems, and it never
    syncs to disk. Here the temporary file sits beside the target, is fsynced, and
    ``os.replace`` swaps it in: the file under a checkpoint's name is always a complete old or
    complete new checkpoint. Remote paths (``s3://`` ...) go to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically (see the class docstring)."""
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO.save_checkpoint takes no storage_options")
        target = Path(str(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable (POSIX; not possible on every file system)
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError:
            pass

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Reads a checkpoint with :func:`load_checkpoint_file` (no pickle unless
        ``weights_only=False``)."""
        if not _is_local(path):
            return super().load_checkpoint(path, map_location, weights_only is not False)
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_checkpoint_file(path, map_location, weights_only)


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` beside the best checkpoints so that ``--ckpt_path last`` resumes
    from at most a few minutes back.

    Saved after every validation, at the end of every epoch and of training, every
    ``every_minutes`` of training and every ``every_n_train_steps`` steps, whether or not
    ``val_cer`` improved. (Lightning's ``save_last`` on a ``ModelCheckpoint`` that monitors
    ``val_cer`` refreshes ``last.ckpt`` only when a best checkpoint is written at a
    validation, and holds back step-triggered saves until the first validation: a long
    first epoch, or an epoch that does not improve, would leave nothing recent to resume
    from.)

    The file goes to the folder of the trainer's ``ModelCheckpoint`` (the CLI's
    ``--checkpoint.dirpath``), where Lightning looks for ``last.ckpt``.

    Args:
        every_minutes: Save at the first step after this much time since the last save (0: off).
        every_n_train_steps: Also save every this many optimizer steps (0: off).
        filename: File name in the checkpoint folder.
    """

    def __init__(self, every_minutes: float = 10.0, every_n_train_steps: int = 0,
                 filename: str = "last.ckpt") -> None:
        if every_minutes < 0 or every_n_train_steps < 0:
            raise ValueError("every_minutes and every_n_train_steps must be >= 0")
        self.every_minutes = every_minutes
        self.every_n_train_steps = every_n_train_steps
        self.filename = filename
        self._saved_step: int | None = None
        self._saved_at = time.monotonic()

    def path(self, trainer) -> Path:
        """Where ``last.ckpt`` goes: the ModelCheckpoint's folder, else the trainer's
        ``default_root_dir``."""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        return Path(folder) / self.filename

    def _save(self, trainer, force: bool = False) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or trainer.state.fn != "fit":
            return
        # A step or time save already holds this step; ``force`` is for the saves after a
        # validation, which changes the state without a step (see on_train_epoch_end).
        if self._saved_step == trainer.global_step and not force:
            return
        trainer.save_checkpoint(self.path(trainer), weights_only=False)  # the full state
        self._saved_step = trainer.global_step
        self._saved_at = time.monotonic()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Warns when a fit resumes from a mid-epoch checkpoint that holds no training-loader
        position for our data module (written by a version before the position was saved, or
        with its key removed): the interrupted epoch then starts over from its first batch,
        so its first batches are trained twice. The run goes on; the message says so."""
        from htr_lightning.data.datamodule import HTRDataModule  # data imports nothing from here

        datamodule = getattr(trainer, "datamodule", None)
        if trainer.state.fn != "fit" or not isinstance(datamodule, HTRDataModule):
            return
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        done = progress.get("current", {}).get("processed", 0)
        if done and not progress.get("is_last_batch") and type(datamodule).__qualname__ not in checkpoint:
            log.warning("the checkpoint stopped %d batches into epoch %s but holds no training "
                        "loader position (written before positions were saved?): the epoch "
                        "starts over from its first batch", done, checkpoint.get("epoch"))

    def on_train_start(self, trainer, pl_module) -> None:
        """Starts the clock (a resumed run counts from its own start)."""
        self._saved_at = time.monotonic()
        self._saved_step = trainer.global_step  # that state is already on disk when resuming

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Saves when a step or time trigger is due."""
        step = trainer.global_step
        due = self.every_n_train_steps > 0 and step % self.every_n_train_steps == 0
        if not due and self.every_minutes > 0:
            late = time.monotonic() - self._saved_at >= 60 * self.every_minutes
            # Each process has its own clock; rank 0 decides so that all save together
            # (trainer.save_checkpoint is collective).
            due = bool(trainer.strategy.broadcast(late))
        if due:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        """Saves after each validation within an epoch (after the best-checkpoint callback,
        where that one saves at validation end: Lightning runs checkpoint callbacks last, in
        the order they were given), even when a step or time save already wrote this step.
        A validation after the epoch's last batch is left to ``on_train_epoch_end``, which
        follows at once: one write of the file per epoch, not two."""
        if not trainer.is_last_batch:
            self._save(trainer, force=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Saves again at the end of each epoch: with one validation per epoch, Lightning's
        ``ModelCheckpoint`` records the epoch's score here, after ``on_validation_end``. A
        ``last.ckpt`` left at the validation-end state would carry the previous best score,
        and a resume from it could overwrite a better ``best.ckpt`` with a worse one."""
        self._save(trainer, force=True)

    def on_train_end(self, trainer, pl_module) -> None:
        """Saves the final state."""
        self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Saves when the run is stopped with SIGTERM (``kill``, a cluster's time limit or
        preemption), so that nothing since the last save is lost.

        Lightning answers SIGTERM by raising ``SIGTERMException`` after the step under way,
        where the state is whole. Not saved: a SIGTERM that stops a validation (the half-run
        validation loop would be saved with it; the previous ``last.ckpt`` stands), and any
        other exception (the state may be mid-step, and ``last.ckpt`` is the one file a
        resume relies on).
        """
        if not isinstance(exception, SIGTERMException):
            return
        if trainer.validating:
            log.warning("SIGTERM during a validation: last.ckpt keeps step %d", self._saved_step or 0)
            return
        self._save(trainer)
        log.info("SIGTERM: last.ckpt saved at step %d", trainer.global_step)


class InitWeights(Callback):
    """Starts ``fit`` from another checkpoint's network weights (CLI: ``--init.ckpt_path``):
    fine-tuning a model pretrained on synthetic lines or another collection on your own data.

    The weights are loaded when training starts, through the model's ``init_weights_from``
    (:meth:`~htr_lightning.models.CTCSystem.init_weights_from`: same architecture, output rows
    matched by symbol). When the run resumes from ``--ckpt_path``, the resumed weights win and
    this does nothing, so a fine-tuning run resumes like any other.

    Args:
        ckpt_path: The checkpoint to start from; None: train from scratch.
        weights_only: False to open a trusted checkpoint that needs pickle.
    """

    def __init__(self, ckpt_path: str | None = None, weights_only: bool | None = None) -> None:
        self.ckpt_path = ckpt_path
        self.weights_only = weights_only

    def on_fit_start(self, trainer, pl_module) -> None:
        """Loads the weights (after Lightning's restore, so a resume can be seen and wins)."""
        if self.ckpt_path is None:
            return
        if trainer.ckpt_path is not None:
            log.info("resuming from %s: --init.ckpt_path %s is not applied", trainer.ckpt_path,
                     self.ckpt_path)
            return
        if not hasattr(pl_module, "init_weights_from"):
            raise TypeError(f"{type(pl_module).__name__} cannot start from another checkpoint's "
                            f"weights (--init.ckpt_path {self.ckpt_path}); CTC systems can")
        pl_module.init_weights_from(self.ckpt_path, self.weights_only)
