"""Pack a dataset's lines into a compact folder dataset at a fixed height.

``python -m htr_lightning.data.pack --dataset pagexml --root ../shared/data/hooker --height 64
--out packed/hooker_h64`` reads each split through its reader (cutting page lines, skipping and
reporting bad ones as training does), turns every line to dark-on-light grayscale at
``--height`` pixels (aspect kept, as the training preprocessing does) and writes it as
``<out>/<split>/<line id>.png`` with ``<line id>.txt`` beside it: the ``folder`` layout, so
``--data.dataset folder --data.root <out>`` trains on the same lines and texts (ids and
charset included). Use it to take a collection to another machine in a few tens of MB (the
Hooker letters: 110 MB of page scans become the lines at 64 px), or to stop cutting pages at
every start. Augmentation then works on the packed pixels rather than the originals.
``--levels 16`` keeps 16 grey levels instead of 256, which makes the PNGs about 3x smaller
(Hooker lines at 64 px: 10.0 KB -> 3.1 KB per line, measured on 200 train lines).
``--reader_options '{"rectify": true}'`` passes options to the reader (here: PAGE-XML lines
straightened along their baselines).

``<out>/pack.json`` (:data:`MANIFEST`) records how the lines were made: dataset, height,
levels, reader options and the lines per split. A model trained on the packed folder reads
from it whether its lines were straightened (``rectified_lines``), so it cuts PAGE-XML inputs
the same way at inference. A later call may add splits to the same ``--out`` with the same
settings; other settings are refused, so one folder never mixes two ways of cutting.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from htr_lightning.data.readers import READERS
from htr_lightning.data.readers.common import SPLITS
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.data.transforms import LinePreprocessor, check_levels, quantize_levels

log = logging.getLogger("htr_lightning.data")

MANIFEST = "pack.json"


def read_manifest(root: str | Path) -> dict | None:
    """``root/pack.json`` as written by :func:`main`; None where ``root`` has none.

    Raises:
        ValueError: naming the file, when it is not a JSON object.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a pack manifest: {err}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a pack manifest: a JSON object was expected")
    return manifest


def pack_lines(samples: Sequence[LineSample], folder: str | Path, height: int,
               levels: int = 256) -> int:
    """Writes ``samples`` as ``folder/<id>.png`` + ``<id>.txt`` at ``height`` pixels, with
    ``levels`` grey levels spread over 0-255 (256: as resized).

    Returns:
        The number of lines written; unreadable images are logged (naming the file) and left
        out.

    Raises:
        ValueError: for an id that would leave ``folder`` (absolute, or with ``..``).
    """
    check_levels(levels)  # before any line is read
    folder = Path(folder)
    # The training preprocessing's grayscale, polarity and height, with no width limit.
    preprocess = LinePreprocessor(height=height, max_width=sys.maxsize)
    written = 0
    for sample in samples:
        relative = Path(sample.id)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"line id {sample.id!r} ({sample.path}) would be written outside {folder}")
        try:
            gray = preprocess.scaled(sample.load())
        except BadSampleError as err:
            log.warning("pack: skipping line %s: %s", sample.id, err)
            continue
        target = folder / f"{sample.id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        quantize_levels(gray, levels).save(target, optimize=True)
        target.with_suffix(".txt").write_text(sample.text + "\n", encoding="utf-8")
        written += 1
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m htr_lightning.data.pack",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(READERS))
    parser.add_argument("--root", required=True, help="dataset folder")
    parser.add_argument("--out", required=True, help="folder to write (the folder layout)")
    parser.add_argument("--height", type=int, default=64, help="line height in pixels")
    parser.add_argument("--levels", type=int, default=256,
                        help="grey levels kept (16: about 3x smaller files)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    parser.add_argument("--cache_dir", default=None,
                        help="the reader's cut-line cache (pagexml, iam), e.g. .cache/hooker")
    parser.add_argument("--reader_options", type=_json_object, default={},
                        help='reader keyword arguments as JSON, e.g. \'{"rectify": true}\'')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = dict(args.reader_options)
    if args.cache_dir:
        options["cache_dir"] = args.cache_dir
    made = {"dataset": args.dataset, "root": str(args.root), "height": args.height,
            "levels": args.levels, "reader_options": args.reader_options}
    earlier = read_manifest(args.out) or {}
    counts = earlier.get("lines", {})  # splits packed by an earlier call stay listed
    # The root may be spelled another way (relative, absolute): the settings must match.
    differ = [k for k in made if k != "root" and k in earlier and earlier[k] != made[k]]
    if differ:  # one folder, one way of cutting: a model learns from the manifest how
        parser.error(f"{Path(args.out) / MANIFEST} says its lines were packed with other "
                     + ", ".join(f"{k} ({earlier[k]!r}, not {made[k]!r})" for k in differ)
                     + "; pack into another --out")
    for split in args.splits:
        report = SkipReport(f"{args.dataset} {split}")
        samples = READERS[args.dataset](args.root, split, report=report, **options)
        report.log()
        counts[split] = pack_lines(samples, Path(args.out) / split, args.height, args.levels)
        print(f"{split}: {counts[split]} of {len(samples)} lines -> {Path(args.out) / split}")
    manifest = {**made, "lines": counts}
    (Path(args.out) / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"a JSON object is expected, not {text!r}")
    return value


if __name__ == "__main__":
    main()
