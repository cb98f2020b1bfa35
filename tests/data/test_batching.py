import logging
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from PIL import Image
from torch.utils.data import DataLoader

from htr_lightning.data import (LineDataset, LinePreprocessor, LineSample, ResumableLoader,
                                WidthBucketSampler, collate_lines)
from htr_lightning.data import batching
from htr_lightning.data.batching import worker_init
from htr_lightning.data.datamodule import HTRDataModule


def _samples(tmp_path):
    ok = []
    for i, w in enumerate([80, 200, 120]):
        path = tmp_path / f"l{i}.png"
        Image.new("L", (w, 32), 255).save(path)
        ok.append(LineSample(f"l{i}", f"text {i}", str(path)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # a truncated PNG
    return [ok[0], LineSample("broken", "x", str(broken)), ok[1],
            LineSample("gone", "y", str(tmp_path / "missing.png")), ok[2]]


def test_collate_pads_and_keeps_the_contract(tmp_path):
    ds = LineDataset(_samples(tmp_path), LinePreprocessor(height=32))
    batch = collate_lines([ds[0], ds[2], ds[4]])
    assert batch["images"].shape == (3, 1, 32, 224) and batch["images"].dtype == torch.float32
    assert batch["widths"].tolist() == [80, 200, 120] and batch["widths"].dtype == torch.long
    assert batch["texts"] == ["text 0", "text 1", "text 2"]
    assert batch["ids"] == ["l0", "l1", "l2"]
    assert batch["images"][0, :, :, 80:].abs().sum() == 0
    assert collate_lines([ds[0]], pad_to=1)["images"].shape == (1, 1, 32, 80)


def test_unreadable_images_cost_one_line_and_are_named_once(tmp_path, caplog):
    ds = LineDataset(_samples(tmp_path), LinePreprocessor(height=32))
    with caplog.at_level(logging.WARNING, logger="htr_lightning.data"):
        items = [ds[i] for i in range(len(ds))] + [ds[1]]
    batch = collate_lines(items)
    assert batch["ids"] == ["l0", "l1", "l2"]
    messages = [r.message for r in caplog.records]
    assert sum("broken.png" in m for m in messages) == 1
    assert sum("missing.png" in m for m in messages) == 1
    assert collate_lines([None, None])["images"].shape[0] == 0


def test_bucket_sampler_is_a_permutation_with_similar_lengths_per_batch():
    lengths = [(i * 37) % 101 for i in range(400)]
    sampler = WidthBucketSampler(lengths, batch_size=8, pool=10, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(400))
    spread = [max(lengths[i] for i in order[k:k + 8]) - min(lengths[i] for i in order[k:k + 8])
              for k in range(0, 400, 8)]
    assert sum(spread) / len(spread) < 10  # random batches would spread ~80
    sampler.set_epoch(1)
    assert list(sampler) != order
    sampler.set_epoch(0)
    assert list(sampler) == order


LENGTHS = [(i * 37) % 101 for i in range(403)]  # 50 full batches of 8 and one of 3


def _loader_batches(sampler, batch_size=8):
    """The batches a DataLoader cuts from the sampler's index stream."""
    loader = DataLoader(range(len(LENGTHS)), batch_size=batch_size, sampler=sampler,
                        collate_fn=list)
    return list(loader)


def test_the_short_batch_comes_last_so_the_loader_keeps_every_bucket():
    sampler = WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert [len(b) for b in batches] == [8] * 50 + [3]
        assert _loader_batches(sampler) == batches
        assert len(sampler) == len(LENGTHS)


def test_processes_share_the_bucketed_batches_evenly():
    shares = [WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0, num_replicas=3, rank=r)
              for r in range(3)]
    single = WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0).batches()
    per_rank = [s.batches() for s in shares]
    assert [len(b) for b in per_rank] == [17, 17, 17]  # 51 batches, no padding needed
    # Every process draws the same order and takes every third batch of it.
    assert [b for i in range(17) for b in (per_rank[0][i], per_rank[1][i], per_rank[2][i])] == single
    for share in shares:
        assert _loader_batches(share) == share.batches()
    four = [WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0, num_replicas=4, rank=r)
            for r in range(4)]
    assert {len(s.batches()) for s in four} == {13}  # 51 batches padded to 52 with the first
    assert four[3].batches()[-1] == single[0]


def test_resume_skips_the_batches_done_once_and_moves_past_a_finished_epoch():
    sampler = WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0)
    sampler.set_epoch(4)
    epoch4 = sampler.batches()
    sampler.set_epoch(0)
    sampler.resume(4, 20)
    assert _loader_batches(sampler) == epoch4[20:]
    assert _loader_batches(sampler) == epoch4  # the next pass is whole again
    sampler.resume(4, 51)  # epoch 4 was finished: the next pass is epoch 5 from its start
    assert sampler.epoch == 5 and _loader_batches(sampler) == sampler.batches()
    assert sampler.batches() != epoch4


def test_the_resumable_loader_reports_the_trained_batches_not_the_fetched_ones():
    done = iter([3, 7])
    sampler = WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0)
    sampler.set_epoch(2)
    loader = ResumableLoader(range(len(LENGTHS)), batch_size=8, sampler=sampler,
                             collate_fn=list, batches_done=lambda: next(done))
    assert loader.state_dict() == {"epoch": 2, "batches_done": 3}
    state = loader.state_dict()
    other = ResumableLoader(range(len(LENGTHS)), batch_size=8, collate_fn=list, batches_done=int,
                            sampler=WidthBucketSampler(LENGTHS, batch_size=8, pool=10, seed=0))
    other.load_state_dict(state)
    assert list(other) == sampler.batches()[7:] and len(other) == 51
    with pytest.raises(TypeError, match="needs a WidthBucketSampler, not SequentialSampler"):
        ResumableLoader(range(3), batches_done=int)


def _worker_status(count: int, from_parent: bool = False) -> int:
    """Forks a process that installs ``worker_init`` and gets ``count`` SIGTERMs, sent by
    itself (as ``kill`` or Slurm would: not the process that started it) or by the parent;
    returns its exit status, or the signal number when a signal killed it."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            worker_init(0)
            os.write(ready_w, b"x")
            for _ in range(0 if from_parent else count):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            time.sleep(2)  # long enough for a SIGTERM to end it
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    for _ in range(count if from_parent else 0):
        os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    os.close(ready_r)
    os.close(ready_w)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def test_a_worker_outlives_the_first_sigterm_from_outside_and_ends_on_the_second():
    assert _worker_status(1) == 0
    assert _worker_status(2) == signal.SIGTERM


def test_a_sigterm_from_the_main_process_ends_a_worker_at_once():
    """How the DataLoader's ``terminate()`` and multiprocessing's exit handler end workers
    that are still alive: ignoring it hung the exit of a run stopped inside a validation."""
    started = time.monotonic()
    assert _worker_status(1, from_parent=True) == signal.SIGTERM
    assert time.monotonic() - started < 1.5


def test_worker_init_seeds_as_lightning_would(monkeypatch):
    """Lightning adds its worker seeding only to loaders without a worker_init_fn: ours must
    do it in its place when ``seed_everything(workers=True)`` asked for it."""
    # Not in pytest's own process: the SIGTERM guard blocks the signal and starts a thread.
    monkeypatch.setattr(batching, "_outlive_first_outside_sigterm", lambda: None)
    draws = {}
    for name, init in (("ours", worker_init), ("lightning", pl_worker_init_function)):
        monkeypatch.setenv("PL_SEED_WORKERS", "1")
        torch.manual_seed(1234)  # what torch gives worker 1 of a loader with base seed 1233
        init(1)
        draws[name] = (torch.rand(2).tolist(), random.random(), float(np.random.rand()))
    assert draws["ours"] == draws["lightning"]
    monkeypatch.delenv("PL_SEED_WORKERS")
    torch.manual_seed(1234)
    worker_init(1)
    assert torch.rand(2).tolist() != draws["ours"][0]  # unseeded: torch's own seed stays


def test_the_datamodule_loaders_use_worker_init():
    dm = HTRDataModule(dataset="synthetic", height=32, batch_size=2, augment=False,
                       synthetic_size={"train": 4, "val": 2, "test": 2})
    dm.setup("fit")
    assert dm.train_dataloader().worker_init_fn is worker_init
    assert dm.val_dataloader().worker_init_fn is worker_init
