"""HTRDataModule: one LightningDataModule for every model family."""

from __future__ import annotations

import glob
import logging
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Sampler

from htr_lightning.data.batching import (LineDataset, ResumableLoader, WidthBucketSampler, collate_lines,
                                         worker_init)
from htr_lightning.data.pack import read_manifest
from htr_lightning.data.readers import IMAGE_SUFFIXES, READERS, SPLITS
from htr_lightning.data.samples import LineSample, SkipReport
from htr_lightning.data.synthetic import SYNTHETIC_CHARSET, SyntheticLines
from htr_lightning.data.transforms import LineAugment, LinePreprocessor
from htr_lightning.inference.pages import SEGMENT_MODES, PredictLines, collate_predict
from htr_lightning.text import CTCTokenizer

log = logging.getLogger("htr_lightning.data")

PREDICT_SUFFIXES = (*IMAGE_SUFFIXES, ".xml")


def collect_images(paths: Sequence[str]) -> list[LineSample]:
    """Expands files, folders (recursively) and glob patterns into unlabelled samples: images,
    and PAGE-XML files (a folder holding both gives the XML files only for images that have
    one, so no page is transcribed twice).

    Raises:
        FileNotFoundError: naming each path that matches no image.
    """
    found: list[Path] = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            hits = _without_paged_images(
                sorted(f for f in path.rglob("*") if f.suffix.lower() in PREDICT_SUFFIXES))
        elif path.is_file():
            hits = [path]
        else:
            hits = _without_paged_images(sorted(
                Path(f) for f in glob.glob(str(path), recursive=True)
                if Path(f).suffix.lower() in PREDICT_SUFFIXES))
        if not hits:
            raise FileNotFoundError(f"predict path {p!r}: no image file found there")
        found += hits
    return [LineSample(id=str(f), text="", path=str(f)) for f in found]


def _without_paged_images(files: list[Path]) -> list[Path]:
    """Drops images that have a PAGE-XML file of the same stem beside them."""
    xml_stems = {f.with_suffix("") for f in files if f.suffix.lower() == ".xml"}
    return [f for f in files if f.suffix.lower() == ".xml" or f.with_suffix("") not in xml_stems]


class HTRDataModule(pl.LightningDataModule):
    """Text-line data for every htr_lightning model; batches follow the contract in
    :mod:`htr_lightning.data.batching`.

    Args:
        dataset: Reader name: "synthetic", "folder", "pagexml", "bentham" or "iam".
        root: Dataset folder (not used by "synthetic").
        splits: Optional split name -> split list file or folder, overriding the reader's
            default location (e.g. ``{"train": "lists/train.txt"}``).
        reader_options: Extra keyword arguments for the reader (e.g. ``cache_dir`` for
            pagexml, ``fonts``/``text_file`` for synthetic).
        charset: The model's symbols; None builds it from the training transcriptions.
        height: Input height of the model, in pixels.
        fixed_width: Optional fixed canvas width (e.g. 1024 for the best-practices model).
        max_width: Lines wider than this after resizing are squeezed.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory (useful on GPU).
        augment: Apply :class:`LineAugment` to training lines: True with its defaults, False
            not at all, or a mapping of its settings to change, e.g. ``{shear: 0.5,
            morphology: 0}`` for a strongly slanted hand (the rest keep their defaults).
        bucket_by_width: Group training lines of similar length into batches (also under
            DDP); off, batches are random. Either way the order is seeded by ``seed`` and the
            epoch, and a run resumed mid-epoch goes on with it (:class:`ResumableLoader`).
        synthetic_size: Lines per split for the synthetic dataset.
        seed: Seed of the synthetic text and of bucketing.
        predict_paths: Files, folders or glob patterns for ``predict``: images (PNG, JPEG,
            TIFF, ...) and PAGE-XML files (transcribed along their line polygons).
        segment: How ``predict`` turns images into lines: "auto" (split images that look
            like pages or paragraphs), "page" (always split) or "none" (one line per image).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        root: str | None = None,
        splits: dict[str, str] | None = None,
        reader_options: dict | None = None,
        charset: str | None = None,
        height: int = 64,
        fixed_width: int | None = None,
        max_width: int = 4096,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        augment: bool | dict[str, float] = True,
        bucket_by_width: bool = True,
        synthetic_size: dict[str, int] | None = None,
        seed: int = 0,
        predict_paths: list[str] | None = None,
        segment: str = "auto",
    ) -> None:
        super().__init__()
        if dataset != "synthetic" and dataset not in READERS:
            known = ", ".join(["synthetic", *READERS])
            raise ValueError(f"unknown dataset {dataset!r}; choose one of: {known}")
        self.dataset = dataset
        self.root = root
        if predict_paths is None:  # predicting on given files does not read the dataset
            self._check_root()
        # Read once, here: a broken pack.json is named now, not at the first checkpoint save.
        self._pack_manifest = (read_manifest(Path(root).expanduser())
                               if dataset == "folder" and root else None)
        # The resolved charset is logged with the model; a None here would clash with it.
        self.save_hyperparameters(ignore=["charset"])
        self.splits = dict(splits or {})
        self.reader_options = dict(reader_options or {})
        self._charset = charset
        self.height = height
        self.preprocess = LinePreprocessor(height=height, fixed_width=fixed_width, max_width=max_width)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = augment
        LineAugment.from_option(augment)  # a wrong setting fails here, not in a worker mid-epoch
        self.bucket_by_width = bucket_by_width
        self.synthetic_size = {"train": 20000, "val": 500, "test": 500, **(synthetic_size or {})}
        self.seed = seed
        self.predict_paths = predict_paths
        if segment not in SEGMENT_MODES:
            raise ValueError(f"segment must be one of {SEGMENT_MODES}, not {segment!r}")
        self.segment = segment
        self._samples: dict[str, Sequence[LineSample]] = {}
        # The sampler, not the loader: a loader with live workers cannot be pickled (ddp_spawn).
        self._train_sampler: WidthBucketSampler | None = None
        self._resume_at: dict[str, int] | None = None  # a checkpoint's training position

    def _check_root(self) -> None:
        if self.dataset == "synthetic":
            return
        if self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs data.root (the dataset folder)")
        if not Path(self.root).expanduser().is_dir():
            raise FileNotFoundError(f"dataset root {self.root!r} does not exist or is not a folder")

    # ----------------------------------------------------------------------------- samples
    def samples(self, split: str) -> Sequence[LineSample]:
        """The lines of one split, read once and kept.

        Raises:
            FileNotFoundError: when the split's list or folder is missing (from the reader).
        """
        if split not in self._samples:
            if split == "predict":
                if not self.predict_paths:
                    raise ValueError("predict needs data.predict_paths (files, folders or globs)")
                self._samples[split] = collect_images(self.predict_paths)
            elif self.dataset == "synthetic":
                self._samples[split] = SyntheticLines(self.synthetic_size[split], split=split,
                                                      seed=self.seed, **self.reader_options)
            else:
                self._check_root()
                report = SkipReport(f"{self.dataset} {split}")
                self._samples[split] = READERS[self.dataset](
                    self.root, split, self.splits.get(split), report=report, **self.reader_options)
                report.log()
                log.info("%s %s: %d lines", self.dataset, split, len(self._samples[split]))
        return self._samples[split]

    @property
    def rectified_lines(self) -> bool:
        """Whether the lines are straightened along their baselines: ``reader_options``
        ``rectify`` where it is set, else, for a folder made by :mod:`htr_lightning.data.pack`,
        the reader options it was packed with (its ``pack.json``)."""
        if "rectify" in self.reader_options:
            return bool(self.reader_options["rectify"])
        packed_with = (self._pack_manifest or {}).get("reader_options", {})
        return bool(packed_with.get("rectify", False))

    @property
    def charset(self) -> str:
        """The symbols the model should output: given, the synthetic alphabet, or every symbol
        of the training transcriptions."""
        if self._charset is None:
            if self.dataset == "synthetic":
                self._charset = SYNTHETIC_CHARSET
            else:
                self._charset = CTCTokenizer.from_texts(s.text for s in self.samples("train")).charset
        return self._charset

    def report_coverage(self, split: str) -> dict[str, int]:
        """Counts the symbols of a split that the charset lacks and logs them once.

        Returns:
            symbol -> occurrences (empty when the charset covers the split).
        """
        missing = CTCTokenizer(self.charset).missing(s.text for s in self.samples(split))
        if missing:
            listing = ", ".join(f"{c!r}×{n}" for c, n in missing.most_common())
            log.warning("%s: %d symbol(s) are not in the charset and cannot be predicted: %s",
                        split, len(missing), listing)
        return dict(missing)

    # ------------------------------------------------------------------------- Lightning
    def setup(self, stage: str | None = None) -> None:
        """Reads the splits the stage needs; fails here, not mid-epoch, on a wrong path."""
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",),
                  "predict": ("predict",)}.get(stage or "fit", SPLITS)
        for split in needed:
            self.samples(split)
            if split in ("val", "test") and self.dataset != "synthetic":
                self.report_coverage(split)

    def _loader(self, split: str, train: bool) -> DataLoader:
        samples = self.samples(split)
        augment = LineAugment.from_option(self.augment) if train else None
        dataset = LineDataset(samples, self.preprocess, augment)
        kwargs = dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                      collate_fn=collate_lines, persistent_workers=self.num_workers > 0,
                      worker_init_fn=worker_init)
        if train:
            # One epoch-seeded sampler either way, so a resumed epoch can repeat the order of
            # the run it continues (pool 1: plain random batches).
            sampler = WidthBucketSampler([len(s.text) for s in samples], self.batch_size,
                                         pool=50 if self.bucket_by_width else 1, seed=self.seed,
                                         **self._processes())
            loader = ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                                     batches_done=self._batches_trained, **kwargs)
            if self._resume_at:
                loader.load_state_dict(self._resume_at)
                self._resume_at = None
            self._train_sampler = sampler
            return loader
        return DataLoader(dataset, batch_size=self.eval_batch_size,
                          sampler=self._eval_sampler(split, dataset), **kwargs)

    def _eval_sampler(self, split: str, dataset: LineDataset) -> Sampler | None:
        """Each process's share of a val/test split when the trainer runs several; None (file
        order) otherwise.

        Lightning would give evaluation loaders a ``DistributedSampler``, which pads the split
        with repeated lines until it divides by the number of processes, so those lines count
        twice in the CER and the figure differs from the single-process one. Lightning's
        ``UnrepeatedDistributedSampler`` (what it uses for ``predict``) deals line ``i`` to
        process ``i % world_size`` and repeats none; being a ``DistributedSampler`` already,
        Lightning keeps it. Processes then run batch counts that differ by at most one, which
        is safe because nothing in evaluation communicates per step (the metrics are summed
        across processes at epoch end).

        Raises:
            ValueError: when the split has fewer lines than there are processes (a process
                without a line would log no metric, and the epoch-end sum would hang).
        """
        kwargs = self._processes()
        if kwargs["num_replicas"] <= 1:
            return None
        if 0 < len(dataset) < kwargs["num_replicas"]:
            raise ValueError(f"the {split} split has {len(dataset)} line(s), fewer than the "
                             f"{kwargs['num_replicas']} processes evaluating it; use fewer devices")
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **kwargs)

    def _processes(self) -> dict[str, int]:
        """``num_replicas`` and ``rank`` of this process under the trainer's strategy (1 and
        0 without a trainer or on one device)."""
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not kwargs:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": kwargs["num_replicas"], "rank": kwargs["rank"]}

    def on_exception(self, exception: BaseException) -> None:
        """Ends the persistent DataLoader workers of a run that stopped with an error or
        SIGTERM, through their queues.

        Lightning's teardown ends the loaders of the loop that was running only: a fit that
        stopped inside a validation left the training loader's workers alive, and the exit
        waited on them (multiprocessing joins its children at exit). Written here because
        no public API ends a loader's persistent workers; this is what Lightning does to the
        loaders of the loop it tears down.
        """
        if self.trainer is None:
            return
        for loader in (self.trainer.train_dataloader, self.trainer.val_dataloaders,
                       self.trainer.test_dataloaders):
            iterator = getattr(loader, "_iterator", None)
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None

    def _batches_trained(self) -> int:
        """Batches trained so far in the current epoch (the training loader's position)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def state_dict(self) -> dict[str, int]:
        """The training loader's position, which Lightning saves in every checkpoint of a fit
        (empty outside one).

        Lightning also saves it as the loader's own state, but does not hand that back when
        ``configure_optimizers`` has asked for ``trainer.estimated_stepping_batches`` (as the
        one-cycle schedule does): that call builds the loader before the checkpoint is read
        (Lightning issue #20550). The data module's state is read first, so the position
        travels here too.
        """
        if self._train_sampler is None or self.trainer is None or self.trainer.state.fn != "fit":
            return {}
        return self._train_sampler.position(self._batches_trained())

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Keeps a checkpoint's training position for the next training loader (Lightning
        calls this before it builds the fit's loader, except under strategies that restore
        checkpoints after their setup, such as DeepSpeed and FSDP: the loader is running by
        then, and the interrupted epoch starts over, as it would without this position)."""
        if self._train_sampler is not None:
            log.warning("the training loader was built before the checkpoint was read; the "
                        "interrupted epoch starts over from its first batch")
            return
        self._resume_at = dict(state_dict)

    def teardown(self, stage: str) -> None:
        """Forgets the training position at the end of a fit, so that the next fit with this
        data module (resumed from a checkpoint or not) starts from its own."""
        if stage == "fit":
            self._train_sampler = None
            self._resume_at = None

    def train_dataloader(self) -> DataLoader:
        """Shuffled (and bucketed) training lines with augmentation."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation lines in file order; under several processes, each takes every
        ``world_size``-th line and no line is repeated (see :meth:`_eval_sampler`)."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test lines, shared out across processes as :meth:`val_dataloader` does."""
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        """The lines of the inputs named by ``predict_paths`` (pages split per ``segment``);
        each batch carries ``meta`` to put them back together (see
        :class:`~htr_lightning.inference.pages.PredictLines`)."""
        sources = [s.path for s in self.samples("predict")]
        workers = min(self.num_workers, len(sources))
        # PAGE-XML inputs are cut as the training lines were: reader_options rectify where
        # the config says, else as the model trained (its rectified_lines, kept in checkpoints).
        model = self.trainer.lightning_module if self.trainer is not None else None
        if "rectify" in self.reader_options or model is None:
            rectify = self.rectified_lines
        else:
            rectify = bool(getattr(model, "rectified_lines", False))
        return DataLoader(PredictLines(sources, self.preprocess, self.segment, rectify),
                          batch_size=self.eval_batch_size, num_workers=workers,
                          pin_memory=self.pin_memory, collate_fn=collate_predict)
