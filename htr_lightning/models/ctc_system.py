"""CTCSystem: everything CTC recognisers share (loss, optimiser, decoding, metrics, predict)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from htr_lightning.checkpoints import load_checkpoint_file
from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.decoding import Hypothesis, build_decoder
from htr_lightning.inference.pages import Transcription, prediction_records, transcribe_sources
from htr_lightning.metrics import line_errors, split_metrics, update_split_metrics
from htr_lightning.models.base import HTRSystem
from htr_lightning.text import CTCTokenizer

log = logging.getLogger("htr_lightning.models")


def ctc_min_frames(target: Sequence[int]) -> int:
    """The fewest frames CTC needs for a label sequence: one per symbol, and one blank more
    between each pair of equal neighbours."""
    return len(target) + sum(a == b for a, b in itertools.pairwise(target))


def ctc_feasible(frames: torch.Tensor, targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Whether each target fits its frames (:func:`ctc_min_frames`).

    Returns:
        (B,) bool.
    """
    need = [ctc_min_frames(t) for t in targets]
    return frames.cpu() >= torch.tensor(need, dtype=torch.long)


class CTCSystem(HTRSystem):
    """Base LightningModule for CTC line recognisers.

    Subclasses build ``self.net`` (an nn.Module mapping ``(images, widths)`` to
    ``(log_probs (B, T, C), lengths (B,))``) in their ``__init__`` and call
    ``self.save_hyperparameters()``; everything else lives here.

    Args:
        charset: Output symbols as a plain string (label i + 1 = charset[i], blank = 0).
        height: Input height in pixels (linked from the data in the CLI).
        lr: Peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        scheduler: "onecycle" (warm-up then cosine decay over the planned steps), "plateau"
            (halve when ``val_cer`` stalls) or "constant".
        warmup: Fraction of the planned steps spent warming up ("onecycle").
        decoder: Decoder name or config dict (see :mod:`htr_lightning.decoding`).
        fixed_width: Canvas width for :meth:`transcribe` (lines are placed on a ``height ×
            fixed_width`` canvas, as the data's ``fixed_width`` does for training); None keeps
            each line's own width.
    """

    def __init__(self, charset: str, height: int = 64, lr: float = 1e-3, weight_decay: float = 1e-2,
                 scheduler: str = "onecycle", warmup: float = 0.1,
                 decoder: str | dict = "greedy", fixed_width: int | None = None) -> None:
        super().__init__()
        if scheduler not in ("onecycle", "plateau", "constant"):
            raise ValueError(f"scheduler must be onecycle, plateau or constant, not {scheduler!r}")
        self.tokenizer = CTCTokenizer(charset)
        self.preprocess = LinePreprocessor(height=height, fixed_width=fixed_width)
        self.decoder = build_decoder(decoder)
        self.metrics = split_metrics()
        self._infeasible_seen: set[str] = set()
        self.net: nn.Module

    # ------------------------------------------------------------------------ network
    def forward(self, images: torch.Tensor, widths: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W), (B,) -> log_probs (B, T, C), lengths (B,)."""
        return self.net(images, widths)

    def set_decoder(self, decoder) -> None:
        """Swaps the decoding strategy of a trained model; it is saved with the next checkpoint.

        Args:
            decoder: A decoder object (with ``config()``), a name, or a config dict.
        """
        self.decoder = decoder if callable(decoder) else build_decoder(decoder)
        self.hparams["decoder"] = self.decoder.config()

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[Hypothesis]:
        """Decodes network outputs with the current decoder."""
        return self.decoder(log_probs, lengths, self.tokenizer)

    # --------------------------------------------------------------------------- loss
    def ctc_loss(self, log_probs: torch.Tensor, lengths: torch.Tensor, texts: Sequence[str],
                 ids: Sequence[str]) -> torch.Tensor | None:
        """CTC loss in float32 (also under mixed precision), summed per line, averaged over the
        batch. Lines whose text cannot fit their frames are left out and reported once.

        Returns:
            The loss, or None when no line of the batch is usable.
        """
        targets = [self.tokenizer.encode(t) for t in texts]
        ok = ctc_feasible(lengths, targets)
        for i in (~ok).nonzero().flatten().tolist():
            if ids[i] not in self._infeasible_seen:
                self._infeasible_seen.add(ids[i])
                log.warning("line %s: text of %d symbols does not fit in %d frames; it is left "
                            "out of the loss (%d such lines so far)", ids[i], len(targets[i]),
                            int(lengths[i]), len(self._infeasible_seen))
        if not bool(ok.any()):
            return None
        keep = ok.nonzero().flatten()
        kept = [targets[i] for i in keep.tolist()]
        flat = torch.tensor([c for t in kept for c in t], dtype=torch.long, device=log_probs.device)
        target_lengths = torch.tensor([len(t) for t in kept], dtype=torch.long)
        with torch.autocast(device_type=log_probs.device.type, enabled=False):
            lp = log_probs[keep.to(log_probs.device)].float().transpose(0, 1)  # (T, B, C)
            loss = F.ctc_loss(lp, flat, lengths[keep.to(lengths.device)].cpu(), target_lengths,
                              blank=0, reduction="sum", zero_infinity=True)
        return loss / len(kept)

    # -------------------------------------------------------------------------- steps
    def training_losses(self, batch: dict, log_probs: torch.Tensor, lengths: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """The loss terms of one training batch; ``"loss"`` is what is optimised.

        Subclasses add terms (e.g. distillation) by extending this dict.

        Args:
            batch: The batch (contract in :mod:`htr_lightning.data.batching`).
            log_probs: (B, T, C) network output for it.
            lengths: (B,) valid frames.
        """
        ctc = self.ctc_loss(log_probs, lengths, batch["texts"], batch["ids"])
        return {} if ctc is None else {"loss": ctc}

    def training_forward(self, batch: dict) -> tuple:
        """The network outputs that :meth:`training_losses` receives after the batch.

        ``(log_probs, lengths)`` here; a system whose network has training-only outputs (a CTC
        shortcut, features for an auxiliary loss) returns them after these two, from the same
        forward pass.
        """
        return self(batch["images"], batch["widths"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        """Optimises ``training_losses``; logs each term as ``train_<term>``."""
        if not batch["texts"]:
            return None
        losses = self.training_losses(batch, *self.training_forward(batch))
        for name, value in losses.items():
            self.log(f"train_{name}", value, prog_bar=name == "loss", batch_size=len(batch["texts"]))
        return losses.get("loss")

    examples_logged = 4
    """Validation lines shown in TensorBoard (image, reference, prediction) at each validation."""

    def _log_examples(self, batch: dict, records: list[dict]) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if not hasattr(experiment, "add_image") or self.trainer.sanity_checking:
            return
        for i in range(min(self.examples_logged, len(records))):
            width = int(batch["widths"][i])
            image = 1.0 - batch["images"][i, :, :, :width].float().clamp(0, 1)  # dark ink
            experiment.add_image(f"val_examples/{i}", image.cpu(), self.global_step)
            experiment.add_text(f"val_examples/{i}", f"reference: `{batch['texts'][i]}`  \n"
                                f"prediction: `{records[i]['text']}`", self.global_step)

    def _eval_step(self, batch: dict, stage: str) -> list[dict]:
        if not batch["texts"]:
            return []
        log_probs, lengths = self(batch["images"], batch["widths"])
        loss = self.ctc_loss(log_probs, lengths, batch["texts"], batch["ids"])
        records = line_errors(batch["ids"], batch["texts"], self.decode(log_probs, lengths))
        update_split_metrics(self, stage, loss, records)
        return records

    def validation_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Loss, decoding and CER/WER accumulation (``val_cer``, ``val_wer``); the first
        batch's first lines are logged as images with their texts (TensorBoard). Returns each
        line's :func:`~htr_lightning.metrics.line_errors` record (what ``--output.path``
        writes)."""
        records = self._eval_step(batch, "val")
        if batch_idx == 0 and self.global_rank == 0:
            self._log_examples(batch, records)
        return records

    def test_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """As validation, logged as ``test_cer`` / ``test_wer``."""
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Transcriptions: one ``{"id", "text", "confidence"}`` dict per line. Batches of
        :class:`~htr_lightning.inference.pages.PredictLines` also carry each line's ``meta``
        (source, index, count, box), returned merged into its dict, and the metas of inputs
        without lines (``count`` 0), so a writer can put pages back together."""
        hyps = self.decode(*self(batch["images"], batch["widths"])) if batch["ids"] else []
        return prediction_records(batch, hyps)

    # ---------------------------------------------------------------------- inference
    @torch.inference_mode()
    def transcribe(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
                   segment: str = "auto", batch_size: int = 16, rectify: bool | None = None
                   ) -> Transcription | list[Transcription]:
        """Transcribes line, paragraph or page images (or PAGE-XML files) with the training
        preprocessing (shared code).

        Args:
            images: A path or PIL image, or a list of them.
            segment: How images become lines (see
                :data:`~htr_lightning.inference.pages.SEGMENT_MODES`): "auto" splits images
                that look like pages and passes line images through whole.
            batch_size: Lines per forward pass.
            rectify: Straighten PAGE-XML lines along their baselines; None (the default) cuts
                them as the training lines were (:attr:`rectified_lines`).

        Returns:
            One :class:`Transcription` per input (a single one for a single input): ``text``
            (lines joined by newlines), ``confidence`` (mean over lines) and ``lines``.

        Raises:
            BadSampleError: naming the file, when an input cannot be read.
        """
        with self.evaluating():
            return transcribe_sources(
                images, lambda batch: self.decode(*self(batch["images"].to(self.device),
                                                        batch["widths"])),
                self.preprocess, segment, batch_size,
                rectify=self.rectified_lines if rectify is None else rectify)

    # ------------------------------------------------------------------- fine-tuning
    def _class_layers(self) -> set[str]:
        """Names (``net.<module>``) of the layers whose outputs are the classes: the Linear
        or Conv1d modules with one output per symbol plus blank."""
        n = len(self.tokenizer)
        return {f"net.{name}" for name, module in self.net.named_modules()
                if (isinstance(module, nn.Linear) and module.out_features == n)
                or (isinstance(module, nn.Conv1d) and module.out_channels == n)}

    def init_weights_from(self, checkpoint_path: str | Path, weights_only: bool | None = None
                          ) -> dict[str, str]:
        """Starts from the network weights of another CTC checkpoint: fine-tuning a model
        pretrained on synthetic lines or on another collection. Only the weights are taken;
        the optimiser, schedule and step count start afresh (to continue a run, use
        ``--ckpt_path``).

        The checkpoint's network must have this one's architecture and input height. Its
        charset may differ: the output rows of symbols both charsets have (and blank) are
        copied by symbol, symbols only this model has keep their fresh initialisation, symbols
        only the checkpoint has are dropped.

        Args:
            checkpoint_path: A checkpoint written by ``htr-lightning fit`` (any CTC system).
            weights_only: As for :func:`~htr_lightning.checkpoints.load_checkpoint_file`.

        Returns:
            ``{"kept": symbols taken over, "new": symbols with fresh rows, "dropped": symbols of
            the checkpoint this model lacks}``.

        Raises:
            ValueError: naming the file, when it is no CTC checkpoint or its network differs.
        """
        checkpoint = load_checkpoint_file(checkpoint_path, "cpu", weights_only)
        source_charset = checkpoint.get("hyper_parameters", {}).get("charset")
        state = checkpoint.get("state_dict")
        if not isinstance(source_charset, str) or not isinstance(state, dict):
            raise ValueError(f"{checkpoint_path}: not a checkpoint of a CTC system (no charset "
                             "hyperparameter or no state_dict)")
        source = {k: v for k, v in state.items() if k.startswith("net.")}
        target = {k: v for k, v in self.state_dict().items() if k.startswith("net.")}
        charset = self.hparams.charset
        # label of each of our classes in the checkpoint (blank = 0 in both), -1 = new symbol
        rows = torch.tensor([0] + [source_charset.find(c) + 1 if c in source_charset else -1
                                   for c in charset])
        have = rows >= 0
        class_layers = self._class_layers()
        loaded, problems = {}, []
        for key in sorted(set(source) - set(target)):
            problems.append(f"{key} is in the checkpoint only")
        for key, value in target.items():
            if key not in source:
                problems.append(f"{key} is missing from the checkpoint")
                continue
            theirs = source[key]
            if key.rsplit(".", 1)[0] in class_layers and theirs.shape[1:] == value.shape[1:] \
                    and theirs.shape[0] == len(source_charset) + 1:
                mixed = value.detach().clone()
                mixed[have] = theirs[rows[have]].to(mixed.dtype)
                loaded[key] = mixed
            elif theirs.shape == value.shape:
                loaded[key] = theirs
            else:
                problems.append(f"{key} is {tuple(theirs.shape)} in the checkpoint, "
                                f"{tuple(value.shape)} here")
        if problems:
            raise ValueError(
                f"{checkpoint_path}: its network is not this model's architecture "
                f"({len(problems)} tensors differ: {'; '.join(problems[:3])}"
                f"{'; ...' if len(problems) > 3 else ''}); initialising from it needs the same "
                "network arguments and input height")
        self.load_state_dict(loaded, strict=False)
        report = {"kept": "".join(c for c in charset if c in source_charset),
                  "new": "".join(c for c in charset if c not in source_charset),
                  "dropped": "".join(c for c in source_charset if c not in charset)}
        log.info("initialised from %s: %d symbols kept, %d new (%r), %d of the checkpoint's "
                 "dropped (%r)", checkpoint_path, len(report["kept"]), len(report["new"]),
                 report["new"], len(report["dropped"]), report["dropped"])
        return report

    # ---------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        """AdamW over the parameters that require gradients, with the scheduler named by
        ``scheduler``."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "constant":
            return opt
        if self.hparams.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": sched, "monitor": "val_cer", "interval": "epoch"}}
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("scheduler 'onecycle' needs a finite plan: set trainer.max_epochs or "
                             "trainer.max_steps, or use model.scheduler=plateau")
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=max(1, int(total)),
            pct_start=self.hparams.warmup, anneal_strategy="cos")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
