"""From image files (lines, paragraphs, pages, PAGE-XML) to line images and back to page text.

``predict`` and ``transcribe()`` share this path: :func:`source_lines` turns one input into
its lines in reading order, :class:`PredictLines` streams them to a DataLoader, and
:class:`PageAssembler` puts the transcribed lines back together, one result per input.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from htr_lightning.data.batching import WIDTH_MULTIPLE, collate_lines
from htr_lightning.data.readers.pagexml import read_page_file
from htr_lightning.data.samples import BadSampleError, LineSample, SkipReport
from htr_lightning.data.transforms import LinePreprocessor
from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.inference.segment import box_corners, looks_like_page, split_lines

log = logging.getLogger("htr_lightning.inference")

SEGMENT_MODES = ("auto", "page", "none")
"""How an image becomes lines: "auto" splits images that look like pages or paragraphs (at
most 1.5 times as wide as high, see :func:`looks_like_page`) and passes others through as one
line; "page" always splits; "none" never does. A PAGE-XML file is cut along its own polygons."""


@dataclass(frozen=True)
class SourceLine:
    """One line of an input.

    Attributes:
        source: The input's name (its path).
        index: Position in reading order.
        count: Lines found in the input.
        image: The line image.
        box: (left, top, right, bottom) in the (deskewed) input, or None for PAGE-XML lines.
        polygon: The line's corners in the input image as given (before deskewing), or None
            for PAGE-XML lines, which have their own.
        line_id: The ``TextLine`` id of a PAGE-XML/ALTO line, else None.
    """

    source: str
    index: int
    count: int
    image: Image.Image
    box: tuple[int, int, int, int] | None
    polygon: tuple[tuple[int, int], ...] | None = None
    line_id: str | None = None

    def item(self, preprocess: LinePreprocessor) -> dict:
        """The line as a dataset item (the :func:`~htr_lightning.data.batching.collate_lines`
        keys) with its ``meta``: source, index, count, box, polygon and line id, what
        :class:`PageAssembler` needs to put its input back together."""
        tensor, width = preprocess(self.image)
        return {"image": tensor, "width": width, "text": "", "id": f"{self.source}#{self.index}",
                "meta": {"source": self.source, "index": self.index, "count": self.count,
                         "box": self.box, "polygon": self.polygon, "line_id": self.line_id}}


def source_lines(source: str | Path | Image.Image, segment: str = "auto",
                 name: str | None = None, rectify: bool = False) -> list[SourceLine]:
    """The lines of one input in reading order.

    Args:
        source: An image path, a PAGE-XML/ALTO path, or a PIL image.
        segment: One of :data:`SEGMENT_MODES`.
        name: Name used in results (default: the path, or "image" for a PIL image).
        rectify: Straighten PAGE-XML lines along their baselines
            (:func:`~htr_lightning.data.readers.pagexml.read_page_file`).

    Raises:
        BadSampleError: naming the file, when it cannot be read.
        ValueError: on an unknown ``segment``.
    """
    if segment not in SEGMENT_MODES:
        raise ValueError(f"segment must be one of {SEGMENT_MODES}, not {segment!r}")
    if isinstance(source, Image.Image):
        image, name = source, name or "image"
    else:
        path = Path(source)
        name = name or str(source)
        if path.suffix.lower() == ".xml":
            report = SkipReport(f"pagexml {path.name}")
            try:
                samples = read_page_file(path, report, rectify=rectify)
            except Exception as err:  # any parse or image error of this one file
                raise BadSampleError(f"{path}: cannot read PAGE-XML ({err})") from err
            report.log()
            if not samples and report.count():  # refused (DTD, traversal, ...): say why
                raise BadSampleError(f"{path}: cannot read PAGE-XML ({'; '.join(report.reasons())})")
            # Sample ids are "<xml stem>/<TextLine id>" (read_page_file).
            return [SourceLine(name, i, len(samples), s.load(), None,
                               line_id=s.id.split("/", 1)[1]) for i, s in enumerate(samples)]
        image = LineSample(id=name, text="", path=str(path)).load()
    if segment == "none" or (segment == "auto" and not looks_like_page(image)):
        box = (0, 0, image.width, image.height)
        return [SourceLine(name, 0, 1, image, box, box_corners(box))]
    crops = split_lines(image)
    return [SourceLine(name, i, len(crops), c.image, c.box, c.polygon)
            for i, c in enumerate(crops)]


class PredictLines(IterableDataset):
    """Streams the lines of many inputs, each input handled by one DataLoader worker.

    Yields one item per line (the :func:`~htr_lightning.data.batching.collate_lines` item plus
    ``meta``: source, index, count, box); an input that cannot be read, or holds no line,
    yields one item with ``image`` None and its ``meta`` (with ``error``), so every input gets
    a result.

    Args:
        sources: Image or PAGE-XML paths.
        preprocess: The model's preprocessing (shared with training).
        segment: One of :data:`SEGMENT_MODES`.
        rectify: Straighten PAGE-XML lines along their baselines (as the training data was cut
            with ``reader_options: {rectify: true}``).
    """

    def __init__(self, sources: Sequence[str], preprocess: LinePreprocessor,
                 segment: str = "auto", rectify: bool = False) -> None:
        if segment not in SEGMENT_MODES:
            raise ValueError(f"segment must be one of {SEGMENT_MODES}, not {segment!r}")
        self.sources = list(sources)
        self.preprocess = preprocess
        self.segment = segment
        self.rectify = rectify

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        mine = self.sources if worker is None else self.sources[worker.id::worker.num_workers]
        for source in mine:
            try:
                lines = source_lines(source, self.segment, rectify=self.rectify)
            except BadSampleError as err:
                log.warning("skipping %s", err)
                yield _empty(source, str(err))
                continue
            if not lines:
                yield _empty(source, "no text line found")
            for line in lines:
                yield line.item(self.preprocess)


def _empty(source: str, error: str) -> dict:
    return {"image": None, "meta": {"source": source, "index": 0, "count": 0, "box": None,
                                    "polygon": None, "line_id": None, "error": error}}


def collate_predict(items: list[dict], width_multiple: int = WIDTH_MULTIPLE) -> dict:
    """:func:`~htr_lightning.data.batching.collate_lines` over the line items, plus ``meta``
    (one dict per line) and ``empty`` (the metas of inputs without lines)."""
    lines = [it for it in items if it["image"] is not None]
    batch = collate_lines(lines, pad_to=width_multiple)
    batch["meta"] = [it["meta"] for it in lines]
    batch["empty"] = [it["meta"] for it in items if it["image"] is None]
    return batch


def prediction_records(batch: dict, hyps: Sequence[Hypothesis]) -> list[dict]:
    """What ``predict_step`` returns: one ``{"id", "text", "confidence"}`` dict per line of the
    batch, merged with the line's ``meta`` when the batch carries one (batches of
    :class:`PredictLines`), then the metas of the batch's inputs without lines (``count`` 0),
    so a writer can put every input back together with :class:`PageAssembler`."""
    metas = batch.get("meta") or [{} for _ in hyps]
    records = [{"id": i, "text": h.text, "confidence": h.confidence, **meta}
               for i, h, meta in zip(batch["ids"], hyps, metas)]
    return records + [dict(meta, id=meta["source"]) for meta in batch.get("empty", [])]


LINE_KEYS = ("text", "confidence", "box", "polygon", "line_id")
"""The keys of each line in a :class:`PageAssembler` result (the attributes of a
:class:`LineTranscription`)."""


class PageAssembler:
    """Collects transcribed lines until each input is complete, then gives its result:
    ``{"id", "text" (lines joined by newlines), "confidence" (mean of the lines'), "lines":
    [{"text", "confidence", "box", "polygon", "line_id"}]}``, plus ``error`` for an input
    without lines. ``box`` is in the deskewed input, ``polygon`` in the input as given;
    ``line_id`` names a PAGE-XML/ALTO line (the other two are then None)."""

    def __init__(self) -> None:
        self._pending: dict[str, list[dict]] = {}

    def add(self, line: dict) -> dict | None:
        """Adds one line (a meta dict with ``text`` and ``confidence``); returns its input's
        result when that input is complete, else None."""
        if line["count"] == 0:
            return {"id": line["source"], "text": "", "confidence": 0.0, "lines": [],
                    "error": line.get("error", "no text line found")}
        got = self._pending.setdefault(line["source"], [])
        got.append(line)
        if len(got) < line["count"]:
            return None
        del self._pending[line["source"]]
        got.sort(key=lambda x: x["index"])
        return {"id": line["source"], "text": "\n".join(x["text"] for x in got),
                "confidence": sum(x["confidence"] for x in got) / len(got),
                "lines": [{key: x.get(key) for key in LINE_KEYS} for x in got]}

    @property
    def pending(self) -> list[str]:
        """Inputs with lines still missing."""
        return list(self._pending)


def lines_to_batch(lines: Sequence[SourceLine], preprocess: LinePreprocessor,
                   width_multiple: int = WIDTH_MULTIPLE) -> dict:
    """Preprocesses lines into one batch (the training contract) plus their ``meta``."""
    return collate_predict([line.item(preprocess) for line in lines], width_multiple)


@dataclass(frozen=True)
class LineTranscription(Hypothesis):
    """One line of a :class:`Transcription`.

    Attributes:
        box: (left, top, right, bottom) of the line in the (deskewed) image, or None.
        polygon: The line's corners in the image as given (before deskewing), or None.
        line_id: The ``TextLine`` id of a PAGE-XML/ALTO line, else None.
    """

    box: tuple[int, int, int, int] | None = None
    polygon: tuple[tuple[int, int], ...] | None = None
    line_id: str | None = None


@dataclass(frozen=True)
class Transcription(Hypothesis):
    """The transcription of one input (line, paragraph, page or PAGE-XML file).

    Attributes:
        text: The lines' texts joined by newlines.
        confidence: Mean of the lines' confidences.
        lines: Each line in reading order.
    """

    lines: tuple[LineTranscription, ...] = ()


def transcribe_sources(
    sources: str | Path | Image.Image | Sequence[str | Path | Image.Image],
    recognise: Callable[[dict], list[Hypothesis]],
    preprocess: LinePreprocessor,
    segment: str = "auto",
    batch_size: int = 16,
    width_multiple: int = WIDTH_MULTIPLE,
    rectify: bool = False,
) -> Transcription | list[Transcription]:
    """Splits inputs into lines, recognises them in batches and puts each input back together;
    shared by :meth:`CTCSystem.transcribe <htr_lightning.models.CTCSystem.transcribe>` and the
    ONNX runtime.

    Args:
        sources: A path or PIL image, or a list of them.
        recognise: Batch (the training contract) -> one hypothesis per line.
        preprocess: The model's preprocessing.
        segment: One of :data:`SEGMENT_MODES`.
        batch_size: Lines per batch.
        width_multiple: Batch width rounding (as in training).
        rectify: Straighten PAGE-XML lines along their baselines.

    Returns:
        One :class:`Transcription` for a single input, else a list in input order.
    """
    single = isinstance(sources, (str, Path, Image.Image))
    items = [sources] if single else list(sources)
    names = [f"<image {i}>" if isinstance(item, Image.Image) else str(item)
             for i, item in enumerate(items)]
    lines = [line for item, name in zip(items, names) for line in source_lines(item, segment, name, rectify)]
    assembler, results = PageAssembler(), {}
    for start in range(0, len(lines), batch_size):
        batch = lines_to_batch(lines[start : start + batch_size], preprocess, width_multiple)
        for record in prediction_records(batch, recognise(batch)):
            done = assembler.add(record)
            if done is not None:
                results[done["id"]] = done
    out = []
    for name in names:
        done = results.get(name) or {"text": "", "confidence": 0.0, "lines": []}
        out.append(Transcription(done["text"], done["confidence"], tuple(
            LineTranscription(x["text"], x["confidence"], x["box"], x["polygon"], x["line_id"])
            for x in done["lines"])))
    return out[0] if single else out
