"""The unit every reader produces: one text line with its transcription.

Readers (``readers/``, ``synthetic.py``) return a ``Sequence[LineSample]``; the dataset in
``datamodule.py`` calls :meth:`LineSample.load` lazily, so only transcriptions are read at
start-up. Problems with single files are collected in a :class:`SkipReport` and logged once per
reason, with a count and the first few file names, so one bad file never stops a run.
"""

from __future__ import annotations

import io
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

log = logging.getLogger("htr_lightning.data")


# The only decoders Pillow may use on our inputs (content decides, not the file name): scans
# and photos come as these. Left open, Image.open would also try formats such as EPS, which
# hands the file to Ghostscript when that is installed. (Phone JPEGs that Pillow returns as MPO
# come through the JPEG decoder.)
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")


class BadSampleError(Exception):
    """A single line cannot be used (unreadable image, ...). The message names the file."""


def read_image(src: str | Path | io.BytesIO, where: str | Path) -> Image.Image:
    """Decodes an image file (or an in-memory encoded one) with the allowed decoders.

    Args:
        src: Path or buffer.
        where: The file named in the error.

    Returns:
        The decoded image, in whatever mode it has.

    Raises:
        BadSampleError: if it is missing, truncated, too large or not an image; the cause is
            Pillow's error.
    """
    try:
        with Image.open(src, formats=IMAGE_FORMATS) as im:
            im.load()
            return im
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        # SyntaxError: Pillow's word for a corrupt chunk met while decoding ("broken PNG").
        raise BadSampleError(f"{where}: cannot read image ({err})") from err


@dataclass(frozen=True)
class LineSample:
    """One text-line image and its transcription.

    Attributes:
        id: Identifier unique within its split (file stem, ``page/line`` id, ...).
        text: Ground-truth transcription ("" when unknown, e.g. for prediction).
        path: File the pixels come from, used in every message about this line.
        image_bytes: An already cut and encoded crop (PNG) for lines cut out of page images;
            when None the image is read from ``path``.
    """

    id: str
    text: str
    path: str
    image_bytes: bytes | None = None

    def load(self) -> Image.Image:
        """Decodes the line image.

        Returns:
            The image in whatever mode the file has (the preprocessing converts it).

        Raises:
            BadSampleError: if the file is missing, truncated or not an image.
        """
        src = io.BytesIO(self.image_bytes) if self.image_bytes is not None else self.path
        return read_image(src, self.path)


class SkipReport:
    """Collects lines skipped for a reason and logs each reason once with a count.

    >>> report = SkipReport("train")
    >>> report.add("empty transcription", "a.txt")
    >>> report.count("empty transcription")
    1
    """

    def __init__(self, where: str, show: int = 5) -> None:
        self.where = where
        self.show = show
        self._files: dict[str, list[str]] = defaultdict(list)

    def add(self, reason: str, file: str) -> None:
        """Records that ``file`` was skipped because of ``reason``."""
        self._files[reason].append(str(file))

    def count(self, reason: str | None = None) -> int:
        """Number of skipped lines for one reason, or for all reasons."""
        if reason is not None:
            return len(self._files.get(reason, ()))
        return sum(len(v) for v in self._files.values())

    def reasons(self) -> dict[str, list[str]]:
        """A copy of reason -> skipped files."""
        return {k: list(v) for k, v in self._files.items()}

    def log(self) -> None:
        """Emits one warning per reason: count and the first few files."""
        for reason, files in self._files.items():
            more = f" and {len(files) - self.show} more" if len(files) > self.show else ""
            log.warning(
                "%s: skipped %d line(s): %s: %s%s",
                self.where, len(files), reason, ", ".join(files[: self.show]), more,
            )
