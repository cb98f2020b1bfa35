"""One reader per dataset layout; each returns the text lines of one split.

Every reader has the signature
``read_xxx(root, split, split_spec=None, report=None, **options) -> list[LineSample]`` and is
registered in :data:`READERS` under the name used in configs (``folder``, ``pagexml``,
``bentham``, ``iam``).

Shared rules:

- ``split`` is ``"train"``, ``"val"`` or ``"test"``; ``split_spec`` overrides where the split is
  defined (a path relative to ``root``, or absolute).
- A wrong ``root`` or a missing split list / folder raises :class:`FileNotFoundError` at once,
  naming the missing path and what was expected there.
- A single bad line (missing image, empty transcription, ...) never raises: it is recorded in the
  :class:`~htr_lightning.data.samples.SkipReport` under a reason with the file name and skipped.
  When no report is passed, the reader makes one and logs it before returning.
- Transcriptions are decoded as UTF-8 (Latin-1 as a reported fallback) and normalised with
  :func:`htr_lightning.text.normalize_text` (NFC, whitespace runs collapsed, stripped).
- Ids are unique within a split and the result is sorted deterministically: by id for line
  datasets, by page id then reading order for page datasets (``pagexml``, IAM forms).

Lines cut out of page images (PAGE-XML, ALTO, IAM forms) are returned as grayscale PNG crops in
:attr:`LineSample.image_bytes`; their ``path`` is the page image, so messages name the file.

Modules: :mod:`~htr_lightning.data.readers.folder`, :mod:`~htr_lightning.data.readers.pagexml`
(PAGE-XML and ALTO), :mod:`~htr_lightning.data.readers.bentham`,
:mod:`~htr_lightning.data.readers.iam` (lines and forms), and
:mod:`~htr_lightning.data.readers.common` (split lists, text, XML, image lookup, skip reasons,
and the line cutter with its cache shared by PAGE-XML / ALTO and IAM forms).
"""

from __future__ import annotations

from collections.abc import Callable

from htr_lightning.data.readers.bentham import read_bentham

# Split names, image suffixes and skip reasons stay importable from the package, as callers and
# tests use them (``report.count(readers.NO_TEXT)``).
from htr_lightning.data.readers.common import (
    BAD_POLYGON,
    BAD_XML,
    DTD_REFUSED,
    DUPLICATE_ID,
    EMPTY_TEXT,
    IMAGE_SUFFIXES,
    LATIN1_TEXT,
    NO_IMAGE,
    NO_TEXT,
    NOT_LISTED,
    OUTSIDE_ROOT,
    SEGMENTATION_ERR,
    SPLITS,
    UNREADABLE_IMAGE,
    UNSUPPORTED,
)
from htr_lightning.data.readers.folder import read_folder
from htr_lightning.data.readers.iam import read_iam
from htr_lightning.data.readers.pagexml import read_pagexml
from htr_lightning.data.samples import LineSample

Reader = Callable[..., list[LineSample]]

READERS: dict[str, Reader] = {
    "folder": read_folder,
    "pagexml": read_pagexml,
    "bentham": read_bentham,
    "iam": read_iam,
}
"""Reader functions by the dataset name used in configs."""

__all__ = [
    "BAD_POLYGON",
    "BAD_XML",
    "DTD_REFUSED",
    "DUPLICATE_ID",
    "EMPTY_TEXT",
    "IMAGE_SUFFIXES",
    "LATIN1_TEXT",
    "NO_IMAGE",
    "NO_TEXT",
    "NOT_LISTED",
    "OUTSIDE_ROOT",
    "SEGMENTATION_ERR",
    "UNREADABLE_IMAGE",
    "UNSUPPORTED",
    "READERS",
    "SPLITS",
    "read_bentham",
    "read_folder",
    "read_iam",
    "read_pagexml",
]
