"""Reader for the ICFHR 2014 Bentham line dataset (``BenthamDatasetR0-GT``).

Layout: ``Images/Lines/<id>.png``, ``Transcriptions/<id>.txt`` and
``Partitions/{TrainLines,ValidationLines,TestLines}.lst``.
"""

from __future__ import annotations

from pathlib import Path

from htr_lightning.data.readers.common import (
    NO_IMAGE,
    _check_split,
    _dataset_root,
    _read_list,
    _read_transcription,
    _ReportScope,
    _spec_path,
)
from htr_lightning.data.samples import LineSample, SkipReport


# --------------------------------------------------------------------------------------------
# bentham: ICFHR 2014 BenthamDatasetR0-GT
# --------------------------------------------------------------------------------------------

_BENTHAM_LISTS = {"train": "TrainLines.lst", "val": "ValidationLines.lst", "test": "TestLines.lst"}


def read_bentham(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
) -> list[LineSample]:
    """Reads the ICFHR 2014 Bentham line dataset (``BenthamDatasetR0-GT``).

    Layout: ``Images/Lines/<id>.png``, ``Transcriptions/<id>.txt``,
    ``Partitions/{TrainLines,ValidationLines,TestLines}.lst`` (one line id per row). Point
    ``root`` at ``BenthamDatasetR0-GT/`` or at the folder that contains it.

    Args:
        root: ``BenthamDatasetR0-GT`` or its parent.
        split: ``"train"`` (TrainLines.lst), ``"val"`` (ValidationLines.lst) or ``"test"``
            (TestLines.lst).
        split_spec: Another list of line ids, relative to ``root`` (or to the
            ``BenthamDatasetR0-GT`` folder) or absolute.
        report: Collects skipped lines.

    Returns:
        Samples sorted by id.

    Raises:
        FileNotFoundError: if the layout or the split list is missing.
    """
    _check_split(split)
    given = _dataset_root(root, "the ICFHR 2014 BenthamDatasetR0-GT folder or its parent")
    base = given / "BenthamDatasetR0-GT" if (given / "BenthamDatasetR0-GT").is_dir() else given
    for sub in ("Images/Lines", "Transcriptions"):
        if not (base / sub).is_dir():
            raise FileNotFoundError(
                f"{base / sub} not found; expected the BenthamDatasetR0-GT layout "
                "(Images/Lines/<id>.png, Transcriptions/<id>.txt, Partitions/*.lst)"
            )
    if split_spec is None:
        list_file = base / "Partitions" / _BENTHAM_LISTS[split]
    else:
        list_file = _spec_path(given, split_spec)
        if not list_file.exists() and base != given:
            list_file = _spec_path(base, split_spec)
    ids = _read_list(list_file, f"Bentham line ids of the {split} split, one per line")
    samples = []
    with _ReportScope(report, f"bentham {split}") as rep:
        for line_id in ids:
            image = base / "Images" / "Lines" / f"{line_id}.png"
            if not image.is_file():
                rep.add(NO_IMAGE, str(image))
                continue
            text = _read_transcription(base / "Transcriptions" / f"{line_id}.txt", rep)
            if text is not None:
                samples.append(LineSample(line_id, text, str(image)))
    return sorted(samples, key=lambda s: s.id)
