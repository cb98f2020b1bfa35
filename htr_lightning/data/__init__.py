"""HTRDataModule, dataset readers, preprocessing, augmentation, collate and samplers.

:class:`HTRDataModule` (which needs Lightning) is imported on first use, so inference code can
use the shared preprocessing and collate without importing Lightning.
"""

from htr_lightning.data.batching import LineDataset, ResumableLoader, WidthBucketSampler, collate_lines
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.data.transforms import LineAugment, LinePreprocessor

__all__ = ["BadSampleError", "HTRDataModule", "LineAugment", "LineDataset", "LinePreprocessor",
           "LineSample", "ResumableLoader", "SkipReport", "WidthBucketSampler", "collate_lines"]


def __getattr__(name: str):
    if name == "HTRDataModule":
        from htr_lightning.data.datamodule import HTRDataModule

        return HTRDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "HTRDataModule"])
