r"""Write train/val/test split lists for a collection that has none.

``python -m htr_lightning.data.split --dataset pagexml --root my_pages --val 0.1 --test 0.1``
finds every PAGE-XML/ALTO page under ``root`` (in ``pages/``, ``page/`` or the root itself,
where the ``pagexml`` reader looks), keeps those with at least one transcribed line, and deals
whole pages to the splits at random (``--seed``): lines of one page never land in two splits,
so val and test measure new pages, not new lines of pages already seen. It writes
``train.lst``, ``val.lst`` and ``test.lst`` (page ids, the reader's default lists) into
``--out`` (default: the root) and prints pages and lines per split.

``--dataset folder`` does the same for ``NAME.png`` + ``NAME.txt`` pairs anywhere under the
root, dealing single lines and listing their names (``sub/NAME``) for ``--data.splits``.

``--group_by REGEX`` deals larger units: names whose first capture group (or whole match)
agree stay together. ``'^(.*)_\d+$'`` keeps the pages of one Hooker letter together
(``JDH_2_16_157_003`` -> ``JDH_2_16_157``), and ``'^(.*)/'`` the lines of one subfolder of a
folder dataset. A name the pattern does not match is a unit of its own.

Existing lists are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from htr_lightning.data.readers.common import SPLITS
from htr_lightning.data.readers.folder import _folder_scan
from htr_lightning.data.readers.pagexml import _parse_page, page_folders
from htr_lightning.data.samples import SkipReport


def deal(groups: Mapping[str, int], val: float, test: float, seed: int = 0) -> dict[str, list[str]]:
    """Deals groups (pages, folders or lines, each with its number of lines) to the splits.

    The groups are shuffled with ``seed``; val and test each get the first groups whose lines
    reach their fraction of all lines (at least one group each when the fraction is above
    zero), and train gets the rest.

    Args:
        groups: Group name -> lines in it.
        val: Fraction of the lines for validation.
        test: Fraction of the lines for testing.
        seed: Seed of the shuffle.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted.

    Raises:
        ValueError: on fractions outside [0, 1) that leave no training lines, or too few groups.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val ({val}) and test ({test}) must be fractions in [0, 1) with a sum below 1")
    wanted = {"val": val, "test": test}
    needed = 1 + sum(1 for f in wanted.values() if f > 0)
    if len(groups) < needed:
        raise ValueError(f"{len(groups)} group(s) cannot fill {needed} splits; "
                         "split by smaller groups (a finer --group_by, or none) or add data")
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    total = sum(groups.values())
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    position = 0
    for split in ("val", "test"):
        got = 0
        while (wanted[split] > 0 and (not out[split] or got < wanted[split] * total)
               and len(names) - position > 1):
            out[split].append(names[position])
            got += groups[names[position]]
            position += 1
    out["train"] = names[position:]
    return {split: sorted(items) for split, items in out.items()}


def pagexml_groups(root: Path, report: SkipReport) -> dict[str, int]:
    """Page id -> transcribed lines, for every PAGE-XML/ALTO page the ``pagexml`` reader would
    find under ``root`` (its ``pages/``, ``page/`` or the root; the first folder holding an id
    wins, as in the reader)."""
    found: dict[str, Path] = {}
    for folder in page_folders(root):
        for xml in sorted(folder.glob("*.xml")) if folder.is_dir() else []:
            found.setdefault(xml.stem, xml)
    groups = {}
    for page_id, xml in sorted(found.items()):
        page = _parse_page(xml, page_id, root, False, report)
        if page is not None and page.lines:
            groups[page_id] = len(page.lines)
    return groups


def folder_groups(root: Path, report: SkipReport) -> dict[str, int]:
    """Line name -> 1, for the ``NAME.png`` + ``NAME.txt`` pairs under ``root`` with a
    transcription (names relative to ``root``, as a ``folder`` split list holds them)."""
    return {sample.id: 1 for sample in _folder_scan(root, report)}


def group_names(names: Mapping[str, int], pattern: str | None) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Gathers names (each with its lines) into groups by ``pattern``'s first capture group,
    or its whole match; an unmatched name, or any name without a pattern, is its own group.

    Returns:
        Group -> lines, and group -> its names (sorted).
    """
    regex = re.compile(pattern) if pattern else None
    members: dict[str, list[str]] = {}
    for name in sorted(names):
        match = regex.search(name) if regex else None
        key = name if match is None else (match.group(1) if regex.groups else match.group(0))
        members.setdefault(key, []).append(name)
    return {g: sum(names[n] for n in m) for g, m in members.items()}, members


def write_lists(lists: Mapping[str, Sequence[str]], out: Path, force: bool = False) -> list[Path]:
    """Writes ``<out>/<split>.lst``, one name per line.

    Raises:
        FileExistsError: naming the lists already there, unless ``force``.
    """
    targets = [out / f"{split}.lst" for split in SPLITS]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise FileExistsError(f"split lists already exist: {', '.join(existing)} "
                              "(--force replaces them)")
    out.mkdir(parents=True, exist_ok=True)
    for split, target in zip(SPLITS, targets):
        target.write_text("".join(f"{name}\n" for name in lists[split]), encoding="utf-8")
    return targets


def main(argv: list[str] | None = None) -> None:
    """``python -m htr_lightning.data.split``: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m htr_lightning.data.split",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("pagexml", "folder"), required=True)
    parser.add_argument("--root", required=True, help="the collection's folder")
    parser.add_argument("--val", type=float, default=0.1, help="fraction of the lines (default 0.1)")
    parser.add_argument("--test", type=float, default=0.1, help="fraction of the lines (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--group_by", metavar="REGEX",
                        help="keep names with the same first capture group together, e.g. "
                             r"'^(.*)_\d+$' (pages of one letter) or '^(.*)/' (one subfolder)")
    parser.add_argument("--out", help="where the lists go (default: the root)")
    parser.add_argument("--force", action="store_true", help="replace existing lists")
    args = parser.parse_args(argv)
    root = Path(args.root).expanduser()
    if not root.is_dir():
        parser.error(f"--root {root} does not exist or is not a folder")
    report = SkipReport(f"{args.dataset} {root}")
    names = pagexml_groups(root, report) if args.dataset == "pagexml" else folder_groups(root, report)
    report.log()
    if not names:
        parser.error(f"no transcribed lines found under {root}")
    try:
        groups, members = group_names(names, args.group_by)
        dealt = deal(groups, args.val, args.test, args.seed)
        out = Path(args.out).expanduser() if args.out else root
        lists = {split: [m for g in dealt[split] for m in members[g]] for split in SPLITS}
        targets = write_lists(lists, out, args.force)
    except (re.error, ValueError, FileExistsError) as err:
        parser.error(str(err))
    unit = "pages" if args.dataset == "pagexml" else "lines"
    for split, target in zip(SPLITS, targets):
        lines = sum(groups[g] for g in dealt[split])
        print(f"{split}: {len(dealt[split])} group(s), {len(lists[split])} {unit}, {lines} lines "
              f"-> {target}")
    if args.dataset == "folder" or out != root:
        splits = {split: str(target) for split, target in zip(SPLITS, targets)}
        print(f"train with --data.splits '{json.dumps(splits)}'")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
