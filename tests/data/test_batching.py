import logging

import torch
from PIL import Image

from htr_lightning.data import LineDataset, LinePreprocessor, LineSample, WidthBucketSampler, collate_lines


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
