"""Where a model's errors are, from the per-line records of an evaluation.

``htr-lightning test --config C --ckpt_path M --output.path lines.jsonl --output.format jsonl``
writes one :func:`~htr_lightning.metrics.line_errors` record per line; then

``python -m htr_lightning.analysis lines.jsonl [--top 15] [--json]``

prints:

- the split's CER and WER (the records' sums, equal to the logged ``test_cer``/``test_wer``),
  and the CER ignoring case, punctuation, or both;
- the most frequent character edits of each kind: substitutions ``'e' -> 'c'``, deletions (a
  reference character the model left out) and insertions (one it added), from a minimal
  alignment of each line, so that all edits add up to the character errors;
- proof-reading by confidence: the share of all character errors that lie in the least
  confident 5 %, 10 %, 20 %, 30 % and 50 % of the lines, which tells an archivist how many lines
  to check by hand for how much of the damage;
- the lines with the most errors.

``--json`` prints the same as one JSON object, for a notebook or a script.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from htr_lightning.metrics import ErrorRate, units

RECORD_KEYS = ("id", "reference", "text", "confidence", "char_errors", "chars", "word_errors",
               "words")
TRIAGE_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``--output.format jsonl`` evaluation file (a ``.rank<N>`` share, or
    several concatenated, read the same).

    Raises:
        ValueError: naming the file and line of a row that is not JSON or lacks a record key
            (e.g. a ``predict`` output, which has no references).
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, row in enumerate(handle, 1):
            if not row.strip():
                continue
            try:
                record = json.loads(row)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: not JSON ({err.msg})") from None
            missing = [k for k in RECORD_KEYS if k not in record]
            if missing:
                raise ValueError(f"{path}, line {number}: no {', '.join(missing)}; this reads the "
                                 "lines of validate/test --output.format jsonl, not predict's")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def error_rates(records: Sequence[dict]) -> dict[str, float]:
    """``{"cer", "wer", "lines", "chars", "words"}`` of the records (errors over reference
    units, summed over lines as :class:`~htr_lightning.metrics.ErrorRate` sums them)."""
    chars = sum(r["chars"] for r in records)
    words = sum(r["words"] for r in records)
    return {"cer": sum(r["char_errors"] for r in records) / max(chars, 1),
            "wer": sum(r["word_errors"] for r in records) / max(words, 1),
            "lines": len(records), "chars": chars, "words": words}


def _no_punctuation(text: str) -> str:
    return "".join(c for c in text if not unicodedata.category(c).startswith("P"))


# CER under the relaxed comparisons papers also report; each applied to both sides before
# the usual whitespace normalisation.
CER_VARIANTS = {"ignoring case": str.casefold,
                "ignoring punctuation": _no_punctuation,
                "ignoring case and punctuation": lambda text: _no_punctuation(text).casefold()}


def cer_variants(records: Sequence[dict]) -> dict[str, float]:
    """The CER with case, punctuation, or both left out of the comparison: how much of the
    error is capitals and punctuation, which some transcription guidelines do not care about.

    >>> rates = cer_variants([{"reference": "Kew, 3 May.", "text": "kew 3 May"}])
    >>> {name: round(rate, 3) for name, rate in rates.items()}
    {'ignoring case': 0.182, 'ignoring punctuation': 0.111, 'ignoring case and punctuation': 0.0}
    """
    rates = {}
    for name, relax in CER_VARIANTS.items():
        cer = ErrorRate("char")
        cer.update([relax(r["text"]) for r in records], [relax(r["reference"]) for r in records])
        rates[name] = float(cer.compute())
    return rates


def confusions(records: Sequence[dict]) -> Counter:
    """Character edits over all lines: ``(reference char, predicted char)`` -> count, with
    ``""`` for the missing side of a deletion ``(c, "")`` or an insertion ``("", c)``.

    Each line is aligned on the characters its CER counts (whitespace-normalised), with a
    minimal edit script (rapidfuzz), so the counts add up to the records' ``char_errors``.
    """
    counts: Counter = Counter()
    for record in records:
        ref, hyp = units(record["reference"], "char"), units(record["text"], "char")
        for op in Levenshtein.editops(ref, hyp):
            if op.tag == "replace":
                counts[(ref[op.src_pos], hyp[op.dest_pos])] += 1
            elif op.tag == "delete":
                counts[(ref[op.src_pos], "")] += 1
            else:
                counts[("", hyp[op.dest_pos])] += 1
    return counts


def triage(records: Sequence[dict], fractions: Sequence[float] = TRIAGE_FRACTIONS) -> list[dict]:
    """Proof-reading the least confident lines first: for each fraction of the lines, how many
    lines that is and what share of all character errors (and of all reference characters)
    they hold. Ties in confidence keep file order.

    >>> recs = [{"confidence": c, "char_errors": e, "chars": 10} for c, e in
    ...         [(0.9, 0), (0.2, 6), (0.5, 2), (0.8, 2)]]
    >>> [(t["lines"], t["errors_share"]) for t in triage(recs, [0.25, 0.5])]
    [(1, 0.6), (2, 0.8)]
    """
    ordered = sorted(records, key=lambda r: r["confidence"])
    errors = sum(r["char_errors"] for r in records)
    chars = sum(r["chars"] for r in records)
    rows = []
    for fraction in fractions:
        head = ordered[: math.ceil(fraction * len(ordered))]
        rows.append({"fraction": fraction, "lines": len(head),
                     "errors_share": sum(r["char_errors"] for r in head) / max(errors, 1),
                     "chars_share": sum(r["chars"] for r in head) / max(chars, 1)})
    return rows


EDIT_KINDS = {"substitutions": lambda ref, hyp: bool(ref and hyp),
              "deletions": lambda ref, hyp: not hyp, "insertions": lambda ref, hyp: not ref}


def analyse(records: Sequence[dict], top: int = 15) -> dict:
    """Everything the command prints, as one JSON-ready dict: ``rates``, ``cer_variants``
    (:func:`cer_variants`), ``edits`` (the
    number of substitutions, deletions and insertions), ``confusions`` (for each of those
    kinds its ``top`` most frequent edits, ``{"reference", "predicted", "count"}``, with
    ``""`` for a missing side), ``triage`` and ``worst_lines`` (the ``top`` records with the
    most character errors)."""
    pairs = confusions(records)
    worst = sorted(records, key=lambda r: -r["char_errors"])[:top]
    kinds = {kind: Counter({p: n for p, n in pairs.items() if is_kind(*p)})
             for kind, is_kind in EDIT_KINDS.items()}
    return {
        "rates": error_rates(records),
        "cer_variants": cer_variants(records),
        "edits": {kind: sum(counts.values()) for kind, counts in kinds.items()},
        "confusions": {kind: [{"reference": ref, "predicted": hyp, "count": n}
                              for (ref, hyp), n in counts.most_common(top)]
                       for kind, counts in kinds.items()},
        "triage": triage(records),
        "worst_lines": [{k: r[k] for k in ("id", "reference", "text", "confidence",
                                            "char_errors", "chars")} for r in worst],
    }


def format_report(result: dict) -> str:
    """The plain-text report of :func:`analyse`'s result."""
    rates, edits = result["rates"], result["edits"]
    lines = [f"{rates['lines']} lines, {rates['chars']} characters, {rates['words']} words: "
             f"CER {100 * rates['cer']:.2f} %, WER {100 * rates['wer']:.2f} %",
             "CER " + ", ".join(f"{100 * v:.2f} % {name}"
                                for name, v in result["cer_variants"].items()),
             f"character edits: {edits['substitutions']} substitutions, "
             f"{edits['deletions']} deletions, {edits['insertions']} insertions"]
    titles = {"substitutions": "read wrongly (reference -> predicted)",
              "deletions": "left out", "insertions": "added"}
    for kind, title in titles.items():
        lines += ["", f"most often {title}:"]
        for row in result["confusions"][kind]:
            if kind == "substitutions":
                lines.append(f"  {row['count']:6d}  {row['reference']!r} -> {row['predicted']!r}")
            else:
                lines.append(f"  {row['count']:6d}  {row['reference'] or row['predicted']!r}")
    lines += ["", "proof-reading the least confident lines first:"]
    for row in result["triage"]:
        lines.append(f"  {100 * row['fraction']:4.0f} % of the lines ({row['lines']}): "
                     f"{100 * row['errors_share']:5.1f} % of the character errors, "
                     f"{100 * row['chars_share']:5.1f} % of the characters")
    lines += ["", "lines with the most errors:"]
    for row in result["worst_lines"]:
        lines.append(f"  {row['id']}  {row['char_errors']}/{row['chars']} errors, "
                     f"confidence {row['confidence']:.3f}")
        lines.append(f"      reference:  {row['reference']}")
        lines.append(f"      prediction: {row['text']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m htr_lightning.analysis",
        description="Error analysis of validate/test --output.format jsonl records.")
    parser.add_argument("records", nargs="+", help="jsonl file(s) of per-line records")
    parser.add_argument("--top", type=int, default=15, help="confusions and lines listed")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        records = [r for path in args.records for r in read_records(path)]
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    result = analyse(records, top=args.top)
    print(json.dumps(result, ensure_ascii=False, indent=1) if args.json else format_report(result))


if __name__ == "__main__":
    main()
