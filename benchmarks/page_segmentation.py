"""Page CER of a trained model: lines found by our segmenter vs. the PAGE-XML's own line crops.

For every page of a split, the reference is the XML's line texts joined by spaces. The model
transcribes (a) the raw page image split by :func:`~htr_lightning.inference.segment.split_lines`
(the XML is not used) and (b) the XML's line crops; each result's lines are joined by spaces
and compared with the reference. CER = total edits / total reference characters over the split,
so a missed, merged or split line costs what it costs a reader of the page.

    .venv/bin/python benchmarks/page_segmentation.py --ckpt_path checkpoints/teacher_hooker/best.ckpt \\
        --root ../shared/data/hooker --split test

Without ``--ckpt_path`` it only counts the lines found against the XML's, page by page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import editdistance
import torch
from PIL import Image

from htr_lightning.data.readers.pagexml import read_page_file
from htr_lightning.inference.segment import split_lines
from htr_lightning.models import load_system
from htr_lightning.text import normalize_text


def count_lines(root: Path, ids: list[str]) -> None:
    """Prints, per page, the XML's line count and the segmenter's, then the totals."""
    expected = found = off = 0
    start = time.perf_counter()
    for page_id in ids:
        n_xml = len(read_page_file(root / "pages" / f"{page_id}.xml"))
        with Image.open(root / "pages" / f"{page_id}.jpg") as image:
            n_found = len(split_lines(image))
        print(f"{page_id:28} XML {n_xml:3d}  found {n_found:3d}")
        expected, found, off = expected + n_xml, found + n_found, off + abs(n_found - n_xml)
    seconds = time.perf_counter() - start
    print(f"{len(ids)} pages: {expected} XML lines, {found} found, {off} off in total "
          f"(sum of |found - XML| per page); {seconds / len(ids):.2f} s/page")


def main() -> None:
    """Prints per-split page CER for segmented pages and for XML crops, and pages/s."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", help="trained model (omit to count lines only)")
    parser.add_argument("--root", default="../shared/data/hooker")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pages", type=int, default=None, help="first N pages only")
    args = parser.parse_args()

    root = Path(args.root)
    ids = [line.strip() for line in (root / f"{args.split}.lst").read_text().splitlines()
           if line.strip()][: args.pages]
    if args.ckpt_path is None:
        count_lines(root, ids)
        return
    model = load_system(args.ckpt_path).eval()
    totals = {"segmented": 0, "xml crops": 0}
    reference_chars, found, expected, seconds = 0, 0, 0, 0.0
    with torch.inference_mode():
        for page_id in ids:
            xml = root / "pages" / f"{page_id}.xml"
            samples = read_page_file(xml)
            reference = normalize_text(" ".join(s.text for s in samples if s.text))
            reference_chars += len(reference)
            start = time.perf_counter()
            page = model.transcribe(xml.with_suffix(".jpg"), segment="page")
            seconds += time.perf_counter() - start
            crops = model.transcribe([s.load() for s in samples], segment="none")
            found += len(page.lines)
            expected += len(samples)
            segmented = normalize_text(" ".join(line.text for line in page.lines))
            from_xml = normalize_text(" ".join(c.text for c in crops))
            totals["segmented"] += editdistance.eval(segmented, reference)
            totals["xml crops"] += editdistance.eval(from_xml, reference)
    print(f"{args.split}: {len(ids)} pages, {expected} XML lines, {found} lines found by the "
          f"segmenter, {reference_chars} reference characters")
    for name, edits in totals.items():
        print(f"page CER, {name:10}: {100 * edits / max(reference_chars, 1):6.2f} %")
    print(f"segment + transcribe: {len(ids) / seconds:.2f} pages/s")


if __name__ == "__main__":
    main()
