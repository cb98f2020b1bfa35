"""Every shipped experiment config parses against the current classes, keeps what it sets, and
the Hooker teacher and student configs agree on what distillation needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from htr_lightning.cli import main

pytestmark = pytest.mark.usefixtures("cli_argv")

ROOT = Path(__file__).resolve().parents[1] / "configs" / "experiment"
CONFIGS = sorted(ROOT.glob("*.yaml"))


def resolved(config: Path, capsys, *extra: str) -> dict:
    """The config as the CLI resolves it for ``fit`` (``--print_config``: nothing is built)."""
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", str(config), *extra, "--print_config"])
    assert stop.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_there_are_configs():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_and_keeps_its_settings(config, capsys):
    written = yaml.safe_load(config.read_text())
    printed = resolved(config, capsys)
    model = written["model"]
    assert printed["model"]["class_path"] == model["class_path"]
    # A setting the signatures no longer know would fail to parse; one that parses must arrive
    # unchanged (YAML lists of pairs print as lists of lists, as they were written).
    for key, value in (model.get("init_args") or {}).items():
        assert kept(printed["model"]["init_args"][key], value), key
    for key, value in written.get("data", {}).items():
        assert kept(printed["data"][key], value), key
    for key, value in written.get("trainer", {}).items():
        assert kept(printed["trainer"][key], value), key


def kept(printed, written) -> bool:
    """Whether the printed config holds what was written: dicts may gain defaults (a callback's
    ``init_args``), lists keep their length, values are equal."""
    if isinstance(written, dict):
        return isinstance(printed, dict) and all(
            k in printed and kept(printed[k], v) for k, v in written.items())
    if isinstance(written, list):
        return (isinstance(printed, list) and len(printed) == len(written)
                and all(kept(p, w) for p, w in zip(printed, written)))
    return printed == written


def test_kept_compares_what_was_written():
    assert kept({"decay": 0.999, "device": None}, {"decay": 0.999})
    assert not kept({"decay": 0.99}, {"decay": 0.999})
    assert not kept({"device": None}, {"decay": 0.999})
    assert kept([[2, 2], None], [[2, 2], None])
    assert not kept([[2, 2]], [[2, 2], None])
    assert not kept([[2, 1]], [[2, 2]])


def test_hooker_student_pools_match_the_teacher(capsys):
    """Distillation needs one frame per frame: the student must pool widths as the teacher does."""
    teacher = resolved(ROOT / "teacher_hooker.yaml", capsys)["model"]["init_args"]
    student = resolved(ROOT / "student_hooker.yaml", capsys)["model"]["init_args"]
    assert teacher["pools"] == student["pools"] == [[2, 2], [2, 2], [2, 1], [2, 1], None]
    assert student["teacher_ckpt"] == "checkpoints/teacher_hooker/best.ckpt"


def test_the_spec_design_is_three_options_away(capsys):
    """The README's 8-px commands start from teacher_hooker.yaml with these three options."""
    args = ("--model.pools", "[[2,2],[2,2],[2,2],[2,1],null]", "--model.feature_dropout", "0",
            "--model.head_dropout", "0")
    init = resolved(ROOT / "teacher_hooker.yaml", capsys, *args)["model"]["init_args"]
    assert init["pools"] == [[2, 2], [2, 2], [2, 2], [2, 1], None]
    assert init["feature_dropout"] == init["head_dropout"] == 0
