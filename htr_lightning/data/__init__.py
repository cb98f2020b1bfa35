"""HTRDataModule, dataset readers, preprocessing, augmentation, collate and samplers."""

from htr_lightning.data.batching import LineDataset, WidthBucketSampler, collate_lines
from htr_lightning.data.datamodule import HTRDataModule
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.data.transforms import LineAugment, LinePreprocessor

__all__ = ["BadSampleError", "HTRDataModule", "LineAugment", "LineDataset", "LinePreprocessor",
           "LineSample", "SkipReport", "WidthBucketSampler", "collate_lines"]
