"""The ``htr-lightning`` command: LightningCLI over our systems and :class:`HTRDataModule`.

``htr-lightning fit|validate|test|predict --config configs/experiment/<name>.yaml``. The model
gets the charset, input height and canvas width from the data section through
``link_arguments``, so a config names them once. Any system of :mod:`htr_lightning.models` can
be the model (the CTC systems and :class:`~htr_lightning.models.trocr.TrOCRSystem`); each takes
``charset`` and ``height`` init arguments (``fixed_width`` is linked where a model has it). ``htr-lightning export --ckpt_path
... --format onnx|safetensors|transformers --output ...`` writes a standalone model
(:mod:`htr_lightning.inference.export`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Optional, Union

from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import (Callback, EarlyStopping, EMAWeightAveraging,
                                         LearningRateMonitor, ModelCheckpoint)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from htr_lightning.checkpoints import (InitWeights, LastCheckpoint, SafeCheckpointIO,
                                      load_hyperparameters)
from htr_lightning.data.datamodule import HTRDataModule
from htr_lightning.inference.pages import PageAssembler
from htr_lightning.inference.pagexml import write_result

log = logging.getLogger("htr_lightning")


class TranscriptionWriter(Callback):
    """Writes ``predict`` results, one per input image, to stdout or a file, as soon as all
    of an input's lines are transcribed. (A plain callback rather than Lightning's
    ``BasePredictionWriter``, which tracks dataset indices that a stream of page lines does
    not have and warns about it.)

    ``validate`` and ``test`` with a ``path`` write each line of the split with its reference
    and error counts (:func:`~htr_lightning.metrics.line_errors`): the whole record in jsonl,
    ``id<TAB>text`` in txt. The validation inside ``fit`` writes nothing. Under several
    processes, each writes its share to ``<path>.rank<N>``.

    Args:
        path: Output file; None prints to stdout. For "pagexml", the output folder.
        format: "txt" (one ``id<TAB>text`` row per line, in reading order), "jsonl" (one
            ``{"id", "text", "confidence", "lines": [{"text", "confidence", "box", "polygon",
            "line_id"}]}`` object per input; ``text`` joins the lines with newlines) or
            "pagexml" (one PAGE-XML file per input in the folder ``path``, see
            :mod:`htr_lightning.inference.pagexml`).
    """

    FORMATS = ("txt", "jsonl", "pagexml")

    def __init__(self, path: str | None = None, format: str = "txt") -> None:
        super().__init__()
        if format not in self.FORMATS:
            raise ValueError(f"output format must be one of {', '.join(self.FORMATS)}, "
                             f"not {format!r}")
        if format == "pagexml" and (path is None or Path(path).is_file()):
            raise ValueError("output format pagexml writes one XML file per input into a "
                             f"folder: set --output.path to a folder (got {path!r})")
        self.path = path
        self.format = format
        self._started = False
        self._pages = PageAssembler()
        self._written: set[Path] = set()
        self._warned_split = False
        self._target = path

    def _rows(self, result: dict) -> list[str]:
        if self.format == "jsonl":
            return [json.dumps(result, ensure_ascii=False)]
        texts = [line["text"] for line in result.get("lines", [])] or [result["text"]]
        return [f"{result['id']}\t{text}" for text in texts]

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                             dataloader_idx=0) -> None:
        """Writes the inputs this batch completed."""
        prediction = outputs
        rows = []
        for line in prediction:
            if "source" not in line:  # a plain line dataset: each line is its own input
                result = {"id": line["id"], "text": line["text"],
                          "confidence": line["confidence"]}
            else:
                result = self._pages.add(line)
                if result is None:
                    continue
            if self.format == "pagexml":
                self._write_page(result)
                continue
            rows += self._rows(result)
        if rows:
            self._write(rows)

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Refuses, before any work, a PAGE-XML output for ``validate``/``test`` (their lines
        have references and error counts, not pages); gives each process its own file when
        there are several (they would truncate and interleave one another's rows)."""
        if self.format == "pagexml" and self.path is not None and stage in ("validate", "test"):
            raise ValueError(f"{stage}: output format pagexml is for predict; write the "
                             "split's lines with --output.format jsonl (or txt)")
        if self.path is not None and trainer.world_size > 1:
            self._target = f"{self.path}.rank{trainer.global_rank}"

    def _evaluated(self, trainer, outputs) -> None:
        if self.path is None or not outputs or trainer.state.fn not in (
                TrainerFn.VALIDATING, TrainerFn.TESTING):
            return  # the validation inside fit, or no file asked for
        self._write([json.dumps(r, ensure_ascii=False) if self.format == "jsonl"
                     else f"{r['id']}\t{r['text']}" for r in outputs])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0) -> None:
        """``validate``: writes the batch's lines with their references and errors."""
        self._evaluated(trainer, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0) -> None:
        """``test``: writes the batch's lines with their references and errors."""
        self._evaluated(trainer, outputs)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        """Reports inputs left incomplete (none, unless a worker failed)."""
        if self._pages.pending:
            log.warning("predict: %d input(s) incomplete: %s", len(self._pages.pending),
                        ", ".join(self._pages.pending[:5]))

    def _write_page(self, result: dict) -> None:
        if "lines" not in result:  # lines of a dataset split: no page to write them into
            if not self._warned_split:
                log.warning("output format pagexml writes the pages of --data.predict_paths; "
                            "lines of a dataset split (%s, ...) are not written", result["id"])
                self._warned_split = True
            return
        try:
            write_result(result, self.path, self._written)
        except (OSError, ValueError) as err:  # one input's file, not the run
            log.warning("%s: no PAGE-XML written (%s)", result["id"], err)

    def _write(self, rows: list[str]) -> None:
        if self.path is None:
            print("\n".join(rows), flush=True)
            return
        mode = "a" if self._started else "w"
        Path(self._target).parent.mkdir(parents=True, exist_ok=True)
        with open(self._target, mode, encoding="utf-8") as f:
            f.writelines(row + "\n" for row in rows)
        self._started = True


class HTRLightningCLI(LightningCLI):
    """LightningCLI with our links, always-on callbacks (best checkpoint by ``val_cer``,
    ``last.ckpt`` for resuming, early stopping on ``val_cer``, fine-tuning from other weights,
    learning-rate logging, transcription writer) and checkpoint files
    written atomically and read without pickle (:mod:`htr_lightning.checkpoints`)."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.charset", "model.init_args.charset", apply_on="instantiate")
        parser.link_arguments("data.height", "model.init_args.height", apply_on="parse")
        # Models with a fixed canvas (best practices: 128×1024) read lines as the data does;
        # jsonargparse skips the link for models without a ``fixed_width`` argument.
        parser.link_arguments("data.fixed_width", "model.init_args.fixed_width", apply_on="parse")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val_cer",
            "checkpoint.mode": "min",
            # last.ckpt comes from LastCheckpoint ("last" below), which also refreshes it
            # when val_cer does not improve.
            "checkpoint.save_last": False,
            "checkpoint.filename": "best-{epoch}-{step}-{val_cer:.4f}",
        })
        # After "checkpoint": Lightning keeps the given order among checkpoint callbacks, so
        # last.ckpt is written after the best checkpoint's bookkeeping at each validation.
        parser.add_lightning_class_args(LastCheckpoint, "last")
        # --init.ckpt_path: fine-tune from another checkpoint's network weights.
        parser.add_lightning_class_args(InitWeights, "init")
        # Stops a run whose val_cer has not improved for 10 validations (--early_stopping.patience);
        # not strict, so a run without validation (limit_val_batches=0) still trains.
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({
            "early_stopping.monitor": "val_cer",
            "early_stopping.mode": "min",
            "early_stopping.patience": 10,
            "early_stopping.strict": False,
        })
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(TranscriptionWriter, "output")
        parser.add_argument(
            "--decoder", type=Optional[Union[str, dict]], default=None,
            help="Decoder for this run, applied after the model (and any --ckpt_path) is loaded, "
                 'e.g. \'{"name": "beam", "beam_size": 16, "lm_path": "lm.arpa"}\'. '
                 "(--model.decoder sets a fresh model's; with --ckpt_path the checkpoint's "
                 "hyperparameters take precedence over --model.*.)")

    def parse_arguments(self, parser, args) -> None:
        """Parses as LightningCLI does, after naming the checkpoint's class as ``--model`` for
        ``validate``, ``test`` and ``predict`` with ``--ckpt_path``, so a checkpoint needs no
        config: ``htr-lightning predict --ckpt_path model.ckpt --data.predict_paths scans/``.
        (LightningCLI requires ``--model`` before it reads the checkpoint; anything the
        command line or a config gives comes after and is parsed as before.)"""
        if args is None or isinstance(args, list):
            argv = list(sys.argv[1:] if args is None else args)
            named = _with_checkpoint_model(argv)
            if named != argv:
                # Parsed here as LightningCLI parses a list, since LightningCLI warns when it is
                # given a list while sys.argv also holds arguments (the command line's case).
                self.config = parser.parse_args(named)
                return
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        """Remembers the run's ``--decoder`` before the classes are built."""
        sub = self.config.get(self.subcommand) if self.subcommand else self.config
        self._decoder = sub.get("decoder") if sub is not None else None

    def instantiate_trainer(self, **kwargs):
        """The trainer, with :class:`SafeCheckpointIO` unless the config names a CheckpointIO."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        return super().instantiate_trainer(plugins=plugins, **kwargs)

    def _parse_ckpt_path(self) -> None:
        """Reads the model's hyperparameters from ``--ckpt_path`` into the config, as
        LightningCLI does, but through :func:`~htr_lightning.checkpoints.load_hyperparameters`:
        LightningCLI's own reading hard-codes ``weights_only=True``, so a file needing pickle
        got torch's bare error, and ``--weights_only false`` could not open it."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        hparams = load_hyperparameters(ckpt_path, self.config[sub].get("weights_only"))
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        kwargs = dict(hparams)  # parse_object may consume what it is given
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"{ckpt_path}: its hyperparameters do not parse as a model config\n")
            raise
        # The network was trained on exactly this charset and input height: the data takes
        # them from the checkpoint, so it needs neither the training split (to rebuild the
        # charset) nor a config that repeats the height. The parse above re-applied the
        # data -> model links, so the model's linked values are set back as well.
        data, model = self.config[sub]["data"], self.config[sub]["model"].get("init_args")
        for key in ("charset", "height", "fixed_width"):
            value = kwargs.get(key)
            if value is None:
                continue
            if key in data:
                data[key] = value
            if model is not None and key in model:
                model[key] = value

    def after_instantiate_classes(self) -> None:
        """Applies ``--decoder`` to the model; for ``fit``, drops the best checkpoint of a run
        without validation and warns of a delayed Lightning EMA (both below)."""
        super().after_instantiate_classes()
        if self._decoder is not None:
            self.model.set_decoder(self._decoder)
        trainer = getattr(self, "trainer", None)
        if self.subcommand not in (None, "fit") or trainer is None:
            return
        if trainer.limit_val_batches == 0:
            # No validation, so no val_cer to rank checkpoints by. Lightning would otherwise
            # warn at every epoch end that val_cer was never logged and hint at a missing
            # log call; the run is fine, and last.ckpt holds its latest weights.
            ranked = [c for c in trainer.checkpoint_callbacks
                      if isinstance(c, ModelCheckpoint) and c.monitor == "val_cer"]
            for callback in ranked:
                callback.save_top_k = 0
            if ranked:
                log.info("no validation in this run (limit_val_batches=0): no best checkpoint "
                         "by val_cer is kept, last.ckpt holds the latest weights")
        for callback in trainer.callbacks:
            if type(callback) is EMAWeightAveraging and (
                    callback.update_starting_at_step is not None
                    or callback.update_starting_at_epoch is not None):
                log.warning("EMAWeightAveraging with a delayed start validates and saves the "
                            "untrained initial weights until its average starts (Lightning "
                            "issue #21724); htr_lightning.averaging.EMA takes the same "
                            "arguments and uses the raw weights until then")


def _with_checkpoint_model(argv: list[str]) -> list[str]:
    """``argv`` with ``--model=<the checkpoint's class>`` after an evaluation subcommand that
    has ``--ckpt_path FILE`` and no ``--model``; unchanged otherwise (or when the file cannot
    be read here: the normal parse then reports it)."""
    sub = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if sub is None or argv[sub] not in ("validate", "test", "predict"):
        return argv
    rest = argv[sub + 1:]
    if any(a == "--model" or a.startswith("--model=") for a in rest):
        return argv
    path = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--ckpt_path"), None)
    path = path or next((a.split("=", 1)[1] for a in rest if a.startswith("--ckpt_path=")), None)
    if not path or not Path(path).is_file():
        return argv
    weights_only = next((a.split("=", 1)[1] for a in rest if a.startswith("--weights_only=")),
                        None)
    if "--weights_only" in rest[:-1]:
        weights_only = rest[rest.index("--weights_only") + 1]
    try:
        hparams = load_hyperparameters(path, None if weights_only is None
                                       else weights_only.lower() not in ("false", "0", "no"))
    except Exception:  # noqa: BLE001 - the normal parse reports an unreadable checkpoint
        return argv
    class_path = hparams.get("_class_path")
    if not class_path:
        return argv
    return [*argv[: sub + 1], f"--model={class_path}", *rest]


def cli_main(args: list[str] | None = None, run: bool = True) -> HTRLightningCLI:
    """Runs the CLI on ``args`` (default: ``sys.argv``) and returns it (trainer, model, data).

    With ``run=False``, ``args`` hold no subcommand and the classes are only built, for a
    script or test that calls ``cli.trainer.validate/fit/test`` itself.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    return HTRLightningCLI(
        LightningModule,
        HTRDataModule,
        subclass_mode_model=True,
        args=args,
        run=run,
        trainer_defaults={"default_root_dir": "checkpoints"},
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``htr-lightning`` (exit status 0 on success; 143 when SIGTERM
    stopped a run, after ``last.ckpt`` was saved).

    ``htr-lightning export ...`` goes to :func:`htr_lightning.inference.export.main` (checkpoint
    to ONNX or safetensors); everything else to the LightningCLI.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["export"]:
        from htr_lightning.inference.export import main as export_main

        export_main(argv[1:])
        return
    try:
        cli_main(args)
    except SIGTERMException:
        # Lightning stops on SIGTERM with a SystemExit that carries no status (0): a job
        # script that resumes until the run succeeds must see that it did not finish.
        sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
