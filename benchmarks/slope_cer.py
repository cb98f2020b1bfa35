"""CER of a PAGE-XML split binned by how steeply each line's baseline slopes.

    htr-lightning test --config configs/experiment/teacher_hooker.yaml --ckpt_path best.ckpt \
        --output.path test_lines.jsonl --output.format jsonl
    python benchmarks/slope_cer.py test_lines.jsonl --root ../shared/data/hooker --split test

The slope of a line is the angle of the chord from its baseline's first point to its last.
Prints, per bin of absolute slope: lines, share of the split's characters, and CER.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from htr_lightning.analysis import read_records
from htr_lightning.data.readers.common import SkipReport
from htr_lightning.data.readers.pagexml import _parse_page, find_page_xml

EDGES = (0.0, 1.0, 2.0, 3.0, 5.0, 90.0)


def slopes(root: Path, split: str) -> dict[str, float]:
    """``<page id>/<line id>`` -> absolute baseline slope in degrees (lines with a baseline)."""
    out = {}
    for page_id in (root / f"{split}.lst").read_text(encoding="utf-8").splitlines():
        if not page_id.strip():
            continue
        xml = find_page_xml(root, page_id)
        if xml is None:
            raise SystemExit(f"{root}/{split}.lst names page {page_id!r}, whose XML is not in {root}")
        page = _parse_page(xml, page_id, root, False, SkipReport(split))
        for line in page.lines if page else []:
            if line.baseline is not None and len(line.baseline) >= 2:
                dx, dy = line.baseline[-1] - line.baseline[0]
                out[f"{page_id}/{line.line_id}"] = abs(math.degrees(math.atan2(-dy, dx)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", help="per-line records of `htr-lightning test --output.format jsonl`")
    parser.add_argument("--root", default="../shared/data/hooker")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    angle = slopes(Path(args.root), args.split)
    records = [r for r in read_records(args.records) if r["id"] in angle]
    chars = sum(r["chars"] for r in records)
    print(f"{'slope, degrees':>15} {'lines':>6} {'chars':>7} {'CER':>7}")
    for low, high in [*zip(EDGES, EDGES[1:]), (0.0, 3.0), (3.0, 90.0)]:
        part = [r for r in records if low <= angle[r["id"]] < high]
        n = sum(r["chars"] for r in part)
        cer = sum(r["char_errors"] for r in part) / n if n else float("nan")
        print(f"{f'{low:g} to {high:g}':>15} {len(part):>6} {100 * n / chars:>6.1f}% {100 * cer:>6.2f}%")


if __name__ == "__main__":
    main()
