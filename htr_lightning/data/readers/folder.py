"""Reader for a plain folder of line images with transcriptions beside them.

Layout: ``root/<split>/**/NAME.png`` + ``NAME.txt`` (also .jpg/.jpeg/.tif/.tiff/.bmp images),
or a list file of ``NAME`` stems relative to ``root``.
"""

from __future__ import annotations

from pathlib import Path

from htr_lightning.data.readers.common import (
    DUPLICATE_ID,
    IMAGE_SUFFIXES,
    NO_IMAGE,
    NO_TEXT,
    _check_split,
    _dataset_root,
    _find_image,
    _read_list,
    _read_transcription,
    _ReportScope,
    _spec_path,
)
from htr_lightning.data.samples import LineSample, SkipReport


# --------------------------------------------------------------------------------------------
# folder: NAME.png + NAME.txt
# --------------------------------------------------------------------------------------------


def read_folder(
    root: str | Path,
    split: str,
    split_spec: str | None = None,
    report: SkipReport | None = None,
) -> list[LineSample]:
    """Reads ``NAME.png`` + ``NAME.txt`` pairs (also .jpg/.jpeg/.tif/.tiff/.bmp images).

    By default the split is the folder ``root/<split>/``, searched recursively; the id of a line
    is its path relative to that folder without suffix (``sub/NAME``). ``split_spec`` may name
    another folder, or a file listing names (stems relative to ``root``, one per line, e.g.
    ``de/6_00_r1l43``), in which case the ids are the listed names.

    Args:
        root: Dataset folder.
        split: ``"train"``, ``"val"`` or ``"test"``.
        split_spec: Folder or list file (relative to ``root`` or absolute) replacing
            ``root/<split>/``.
        report: Collects skipped lines: images without .txt ("no transcription"), .txt without
            image ("image missing"), empty transcriptions.

    Returns:
        Samples sorted by id.

    Raises:
        FileNotFoundError: if ``root`` or the split folder / list does not exist.
    """
    _check_split(split)
    root = _dataset_root(root, "a folder of NAME.png + NAME.txt pairs")
    location = root / split if split_spec is None else _spec_path(root, split_spec)
    with _ReportScope(report, f"folder {split}") as rep:
        if location.is_dir():
            samples = _folder_scan(location, rep)
        elif location.is_file():
            samples = _folder_list(root, location, rep)
        else:
            raise FileNotFoundError(
                f"split folder or list {location} not found; expected a folder of NAME.png + "
                f"NAME.txt pairs (default root/{split}/) or a file listing names; "
                "`python -m htr_lightning.data.split --dataset folder --root ...` writes "
                "such lists for a collection that has no split folders"
            )
    return sorted(samples, key=lambda s: s.id)


def _folder_scan(folder: Path, report: SkipReport) -> list[LineSample]:
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    for path in sorted(folder.rglob("*"), key=lambda p: (rank.get(p.suffix.lower(), 99), str(p))):
        if path.name.startswith(".") or not path.is_file():
            continue
        key = path.relative_to(folder).with_suffix("").as_posix()
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts[key] = path
        elif suffix in rank:
            if key in images:
                report.add(DUPLICATE_ID, f"{path} (also {images[key].name})")
            else:
                images[key] = path
    for key in sorted(texts.keys() - images.keys()):
        report.add(NO_IMAGE, f"{texts[key]} (no image beside it)")
    samples = []
    for key, image in images.items():
        if key not in texts:
            report.add(NO_TEXT, str(image))
            continue
        text = _read_transcription(texts[key], report)
        if text is not None:
            samples.append(LineSample(key, text, str(image)))
    return samples


def _folder_list(root: Path, list_file: Path, report: SkipReport) -> list[LineSample]:
    samples = []
    for name in _read_list(list_file, "names of NAME.png + NAME.txt pairs, one per line"):
        stem = root / name
        if stem.suffix.lower() in IMAGE_SUFFIXES:  # listed with its suffix: "a/b.png"
            stem, name = stem.with_suffix(""), Path(name).with_suffix("").as_posix()
        image = _find_image(stem)
        if image is None:
            report.add(NO_IMAGE, f"{stem}.png (listed in {list_file.name})")
            continue
        text = _read_transcription(stem.with_name(stem.name + ".txt"), report)
        if text is not None:
            samples.append(LineSample(name, text, str(image)))
    return samples
