"""Dataset over line samples, padding-aware collate, the width-bucketing sampler and the
resumable training loader.

The batch contract (what every model in this package consumes, and what a user's own
DataModule must yield to train our models)::

    {
        "images": float32 (B, 1, H, W_max)  ink = 1, background = 0, zero-padded on the right
        "widths": int64   (B,)              content width of each image in pixels (<= W_max)
        "texts":  list[str] of length B     transcriptions ("" when unknown)
        "ids":    list[str] of length B     line identifiers, for messages and outputs
    }
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from htr_lightning.data.samples import BadSampleError, LineSample
from htr_lightning.data.transforms import LineAugment, LinePreprocessor

log = logging.getLogger("htr_lightning.data")

# Batch widths are rounded up to a multiple of this (see ``collate_lines``); exported models
# record it so their runtime batches lines the same way.
WIDTH_MULTIPLE = 32


def worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the fit, validate and test loaders: the worker outlives the first
    SIGTERM from outside the run, then seeds itself as Lightning would.

    Slurm's ``scancel``, preemption and ``kill -TERM -- -PGID`` signal every process of the
    job. A worker that died of it at once made the main process fail inside the step under
    way ("DataLoader worker ... is killed by signal: Terminated", raised from torch's SIGCHLD
    handler) before Lightning's own SIGTERM handling could stop after the step and save
    last.ckpt. With the first such SIGTERM ignored, the main process finishes the step, saves
    and shuts the workers down through their queues as usual; a second one ends the worker.

    A SIGTERM from the main process itself ends the worker at once: that is how the main
    process ends workers it could not shut down through their queues (the DataLoader's
    ``terminate()``, and multiprocessing's exit handler, which terminates the workers left
    alive, then joins them). A run that stopped inside a validation, by SIGTERM to its main
    process or by an error, leaves the training loader's persistent workers alive
    (Lightning's teardown ends the validation loop only); ignoring that SIGTERM hung the
    exit forever.

    Lightning adds its worker seeding (``seed_everything(workers=True)``, which the CLI uses)
    only to loaders without a ``worker_init_fn``, so this one calls it under the same
    condition.
    """
    _outlive_first_outside_sigterm()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        # Imported here: the ONNX runtime imports this module and must not need Lightning.
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def _outlive_first_outside_sigterm() -> None:
    """Routes this worker's SIGTERMs to a thread that knows who sent each one.

    Written by hand: a Python signal handler is not told the sender, ``sigwaitinfo`` is
    (``si_pid``), and it needs the signal blocked and a thread waiting for it. Where it does
    not exist (macOS, Windows), SIGTERM keeps its default action and ends the worker.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the handler inherited from Lightning
    if not hasattr(signal, "sigwaitinfo"):
        return
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    main_pid = parent.pid if parent is not None else os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the thread inherits the mask
    threading.Thread(target=_wait_for_sigterms, args=(main_pid,), name="sigterm", daemon=True).start()


def _wait_for_sigterms(main_pid: int) -> None:
    if signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
        signal.sigwaitinfo({signal.SIGTERM})  # the first came from outside: the next one ends it
    # Dies of the SIGTERM (default action), as an unguarded worker would: unblocked in this
    # thread only, and sent to this thread.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.raise_signal(signal.SIGTERM)


class LineDataset(Dataset):
    """Loads and preprocesses line samples on demand.

    A line whose image cannot be read yields None (logged once with its file name); the
    collate function drops it, so one bad file costs one line, not the run.

    Args:
        samples: The lines of one split.
        preprocess: Shared preprocessing (the same object inference uses).
        augment: Training augmentation, or None.
    """

    def __init__(self, samples: Sequence[LineSample], preprocess: LinePreprocessor,
                 augment: LineAugment | None = None) -> None:
        self.samples = samples
        self.preprocess = preprocess
        self.augment = augment
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        try:
            image, width = self.preprocess(sample.load(), self.augment)
        except BadSampleError as err:
            if sample.id not in self._warned:
                self._warned.add(sample.id)
                log.warning("skipping line %s: %s", sample.id, err)
            return None
        return {"image": image, "width": width, "text": sample.text, "id": sample.id}


def collate_lines(items: list[dict | None], pad_to: int = WIDTH_MULTIPLE) -> dict:
    """Pads a list of dataset items into one batch (see the module docstring).

    Items that are None (unreadable lines) are dropped; an all-None batch gives B = 0.

    Args:
        items: Dataset items (``image`` (1, H, W), ``width``, ``text``, ``id``) or None.
        pad_to: The batch width is rounded up to a multiple of this. oneDNN compiles its
            convolution kernels once per input shape (about 1 s each on this CPU), so a few
            distinct widths train much faster than hundreds of exact ones.
    """
    items = [it for it in items if it is not None]
    if not items:
        return {"images": torch.zeros(0, 1, 1, 1), "widths": torch.zeros(0, dtype=torch.long),
                "texts": [], "ids": []}
    height = items[0]["image"].shape[1]
    max_w = max(it["image"].shape[2] for it in items)
    max_w = -(-max_w // pad_to) * pad_to
    images = torch.zeros(len(items), 1, height, max_w)
    for i, it in enumerate(items):
        images[i, :, :, : it["image"].shape[2]] = it["image"]
    return {
        "images": images,
        "widths": torch.tensor([it["width"] for it in items], dtype=torch.long),
        "texts": [it["text"] for it in items],
        "ids": [it["id"] for it in items],
    }


class WidthBucketSampler(DistributedSampler):
    """Shuffles, then sorts within pools of ``pool × batch_size`` lines so batches hold lines
    of similar width and padding stays small; the batch order is shuffled again.

    Transcription length stands in for image width: it is known without decoding any image
    and is close to proportional to the width of a handwritten line. With ``pool=1`` the
    batches are plain random ones (each sorted inside, which changes nothing).

    The one short batch (when the split does not divide by ``batch_size``) comes last: the
    DataLoader cuts this sampler's index stream into ``batch_size`` pieces, so a short batch
    in the middle would shift every later batch across two buckets.

    Under DDP (``num_replicas`` > 1) every process draws the same shuffled batch list and
    takes every ``num_replicas``-th batch, so the batches stay bucketed; the list is padded
    with its first batches until it divides evenly, so all processes run the same number of
    steps. It is a ``DistributedSampler`` so that Lightning keeps it as it is: Lightning
    wraps any other training sampler in a ``DistributedSampler`` of its own, whose second
    shuffle would undo the bucketing.

    :meth:`resume` starts the next pass part-way through an epoch, for a run resumed from a
    mid-epoch checkpoint (see :class:`ResumableLoader`).

    Args:
        lengths: Text length of each line of the split.
        batch_size: The loader's batch size.
        pool: Batches per sorting pool (larger: less padding, less randomness).
        seed: Base seed; the epoch is added, so every epoch differs but runs repeat.
        num_replicas: Processes sharing the split.
        rank: This process's index among them.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, pool: int = 50, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        self.lengths = list(lengths)
        super().__init__(self.lengths, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.pool = pool
        self._skip = 0

    def batches(self) -> list[list[int]]:
        """This process's batches of the current epoch (``set_epoch``), in order."""
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.pool * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=self.lengths.__getitem__)
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        batches.sort(key=lambda b: len(b) < self.batch_size)  # stable: the short batch last
        per_process = math.ceil(len(batches) / self.num_replicas)
        padded = [batches[i % len(batches)] for i in range(per_process * self.num_replicas)]
        return padded[self.rank :: self.num_replicas]

    def position(self, batches_done: int) -> dict[str, int]:
        """The state a checkpoint keeps: this epoch and the batches trained in it."""
        return {"epoch": int(self.epoch), "batches_done": int(batches_done)}

    def resume(self, epoch: int, batches_done: int) -> None:
        """Makes the next pass go on from a checkpoint's position: batch ``batches_done`` of
        ``epoch``, or the start of the next epoch when that one was finished.

        The epoch is set here, not left to Lightning's ``set_epoch`` at the epoch's start:
        DataLoader workers start drawing indices as soon as the loader's iterator exists,
        which on a resume is before that call.
        """
        if batches_done >= len(self.batches()):
            epoch, batches_done = epoch + 1, 0
        self.set_epoch(epoch)
        self._skip = batches_done

    def __len__(self) -> int:
        return sum(map(len, self.batches()))

    def __iter__(self) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        return iter([i for b in self.batches()[skip:] for i in b])


class ResumableLoader(DataLoader):
    """The training DataLoader, with the position Lightning saves in every checkpoint.

    Lightning stores ``state_dict()`` with the trainer state and hands it back through
    ``load_state_dict`` when a fit resumes (``--ckpt_path``). Resumed from a mid-epoch
    ``last.ckpt``, the run then trains the rest of that epoch exactly as the uninterrupted
    run would have: the same shuffled order, from the batch after the last one trained.
    Without it, Lightning restarts the epoch's iterator, so the first batches of that epoch
    are trained twice and its last ones not at all.

    The position is the trainer's count of batches trained in the epoch, not the batches
    this loader has handed out: Lightning and the workers fetch ahead of training.

    Args:
        batches_done: Returns the number of batches trained so far in the current epoch.
        *args, **kwargs: Those of ``DataLoader``; ``sampler`` must be a
            :class:`WidthBucketSampler`.
    """

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, WidthBucketSampler):
            raise TypeError(f"ResumableLoader needs a WidthBucketSampler, not {type(self.sampler).__name__}")
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return self.sampler.position(self.batches_done())

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(**state)
