"""Error analysis of per-line evaluation records (python -m htr_lightning.analysis)."""

import json

import pytest

from htr_lightning.analysis import analyse, confusions, main, read_records, triage
from htr_lightning.decoding.greedy import Hypothesis
from htr_lightning.metrics import line_errors

REFS = ["the cat  sat", "Front capt.", "a b c", "no errors here"]
PREDS = ["the cot sat", "Frontcaptt.", "a b c d", "no errors here"]
CONFIDENCES = [0.6, 0.1, 0.4, 0.9]


def _records():
    return line_errors([f"l{i}" for i in range(4)], REFS,
                       [Hypothesis(p, c) for p, c in zip(PREDS, CONFIDENCES)])


def test_confusions_are_the_character_errors_of_each_line():
    pairs = confusions(_records())
    # 'a' -> 'o'; the space before "capt" left out and 't' added; " d" added at the end
    assert pairs == {("a", "o"): 1, (" ", ""): 1, ("", "t"): 1, ("", " "): 1, ("", "d"): 1}
    assert sum(pairs.values()) == sum(r["char_errors"] for r in _records()) == 5


def test_triage_puts_the_least_confident_lines_first():
    rows = triage(_records(), [0.25, 0.5, 1.0])
    # l1 (0.1, 2 errors), then l2 (0.4, 2 errors), then l0 (0.6, 1 error), l3 (0.9, none)
    assert [(r["lines"], r["errors_share"]) for r in rows] == [(1, 0.4), (2, 0.8), (4, 1.0)]
    assert rows[0]["chars_share"] == pytest.approx(11 / sum(len(" ".join(t.split())) for t in REFS))


def test_report_rates_equal_the_records_sums_and_the_worst_line_comes_first():
    result = analyse(_records(), top=2)
    chars = sum(r["chars"] for r in _records())
    assert result["rates"]["cer"] == pytest.approx(5 / chars)
    assert result["rates"]["wer"] == pytest.approx((1 + 2 + 1) / 11)
    # "Front capt." -> "Frontcaptt.": the '.' is no error, so ignoring punctuation changes
    # nothing but the length; no line differs in case alone
    no_punct_chars = chars - 1
    assert result["cer_variants"] == pytest.approx({
        "ignoring case": 5 / chars, "ignoring punctuation": 5 / no_punct_chars,
        "ignoring case and punctuation": 5 / no_punct_chars})
    assert result["edits"] == {"substitutions": 1, "deletions": 1, "insertions": 3}
    assert [r["id"] for r in result["worst_lines"]] == ["l1", "l2"]
    assert result["confusions"]["substitutions"] == [
        {"reference": "a", "predicted": "o", "count": 1}]
    assert [row["predicted"] for row in result["confusions"]["insertions"]] == ["t", " "]
    assert result["confusions"]["deletions"] == [{"reference": " ", "predicted": "", "count": 1}]


def test_command_prints_the_report_and_names_bad_files(tmp_path, capsys):
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    main([str(path), "--top", "3"])
    out = capsys.readouterr().out
    assert "4 lines, " in out and "CER " in out
    assert "'a' -> 'o'" in out
    assert "most often added:\n       1  't'\n       1  ' '\n       1  'd'\n" in out
    assert "most often left out:\n       1  ' '\n" in out
    assert "reference:  Front capt." in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_records()[0]) + "\n{oops\n")
    with pytest.raises(SystemExit, match="bad.jsonl, line 2: not JSON"):
        main([str(bad)])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no records"):
        read_records(tmp_path / "empty.jsonl")
