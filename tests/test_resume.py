"""Crash and resume: ``htr-lightning fit`` killed with SIGKILL mid-epoch, then resumed with
``--ckpt_path last``, finishes its plan with the optimizer and scheduler carried over."""

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_systems import read_batches

from htr_lightning.cli import cli_main
from htr_lightning.models import load_system

TESTS = Path(__file__).resolve().parent
EPOCHS, TRAIN_LINES, BATCH = 3, 24, 4
STEPS_PER_EPOCH = TRAIN_LINES // BATCH
LR, WARMUP = 0.003, 0.3


def _config(tmp_path: Path, throttle: float) -> Path:
    from tiny_systems import TINY_TEACHER

    config = {
        "seed_everything": 0,
        "model": {"class_path": "htr_lightning.models.TeacherSystem",
                  "init_args": {**{k: v for k, v in TINY_TEACHER.items() if k != "height"},
                                "lr": LR, "warmup": WARMUP, "scheduler": "onecycle"}},
        "data": {"dataset": "synthetic", "height": TINY_TEACHER["height"], "batch_size": BATCH,
                 "augment": False, "num_workers": 0, "reader_options": {"max_words": 2},
                 "synthetic_size": {"train": TRAIN_LINES, "val": 4, "test": 4}},
        "checkpoint": {"dirpath": str(tmp_path / "ckpt")},
        # A save every 2 steps: the kill below lands between saves, mid-epoch.
        "last": {"every_n_train_steps": 2, "every_minutes": 0},
        "trainer": {"max_epochs": EPOCHS, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs")}},
                    "callbacks": [{"class_path": "tiny_systems.Throttle",
                                   "init_args": {"seconds": throttle}}]},
    }
    path = tmp_path / f"fit_{throttle}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fit(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "htr_lightning.cli", "fit", "--config", str(config), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "HF_HUB_OFFLINE": "1"}


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def _expected_lrs(total: int) -> list[float]:
    """The learning rate at the start of each step under the uninterrupted OneCycle plan."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=total,
                                                pct_start=WARMUP, anneal_strategy="cos")
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def _check_every_checkpoint_loads(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.ckpt"))
    for path in files:
        torch.load(path, weights_only=True)
        assert load_system(path).tokenizer is not None
    return files


def _signal_when(command: list[str], ready, sig: int,
                 group: bool = False) -> tuple[subprocess.Popen, str, bool]:
    """Runs ``command`` (a CLI fit) in a subprocess and sends it ``sig`` as soon as ``ready()``
    holds; returns the ended process, its stderr, and whether the signal was sent. ``group``:
    the run gets a process group of its own and the signal goes to all of it (DataLoader
    workers included), as Slurm's ``scancel`` does."""
    run = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=group)
    sent = False
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            if ready():
                if group:
                    os.killpg(run.pid, sig)
                else:
                    run.send_signal(sig)
                sent = True
                break
            time.sleep(0.02)
        stderr = run.communicate(timeout=120)[1].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    return run, stderr, sent


def test_sigkill_mid_epoch_then_resume_from_last(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "ckpt"
    last = ckpt_dir / "last.ckpt"
    run, stderr, sent = _signal_when(_fit(_config(tmp_path, throttle=0.25)),
                                     lambda: last.is_file() and _step(last) > 0, signal.SIGKILL)
    assert sent, f"no last.ckpt before the run ended:\n{stderr[-3000:]}"
    assert run.returncode == -signal.SIGKILL
    killed_at = _step(last)  # SIGKILL: nothing was written after the signal
    assert 0 < killed_at < STEPS_PER_EPOCH * EPOCHS and killed_at % STEPS_PER_EPOCH != 0
    files = _check_every_checkpoint_loads(ckpt_dir)
    assert last in files
    # SIGKILL leaves no half-written file under a checkpoint's name (only a hidden .tmp can be left).
    resumed_from = _step(last)

    # The resume runs in this process (one interpreter start less): the same CLI.
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])  # LightningCLI also reads sys.argv
    cli = cli_main(["fit", "--config", str(_config(tmp_path, throttle=0.0)), "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == str(last)

    final = torch.load(last, weights_only=True)
    total = STEPS_PER_EPOCH * EPOCHS
    assert final["global_step"] == total and final["epoch"] == EPOCHS - 1
    # AdamW counts its own steps: restored, it reaches the plan's total; restarted, it would
    # count only the steps since the resume.
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(total)}
    assert final["lr_schedulers"][0]["last_epoch"] == total

    # The learning rate logged after the resume continues the plan, step for step.
    logs = sorted((tmp_path / "logs" / "lightning_logs").iterdir())
    rows = list(csv.DictReader((logs[-1] / "metrics.csv").read_text().splitlines()))
    logged = {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")}
    expected = _expected_lrs(total)
    assert min(logged) == resumed_from and max(logged) == total - 1
    for step, lr in logged.items():
        assert lr == pytest.approx(expected[step], rel=1e-6), step
    assert expected[resumed_from] != pytest.approx(expected[0])  # a restart would be visible
    assert len(list(ckpt_dir.glob("best-*.ckpt"))) == 1
    _check_every_checkpoint_loads(ckpt_dir)


def _record_args(tmp_path: Path, name: str, *extra: str, crash_at: int | None = None,
                 throttle: float = 0.0, save_every_step: bool = True) -> tuple[list[str], Path]:
    """CLI arguments of a fit that records its batches to ``<name>.jsonl`` and checkpoints to
    ``<name>/`` (22 train lines: a short last batch in every epoch)."""
    record = tmp_path / f"{name}.jsonl"
    callbacks = [{"class_path": "tiny_systems.RecordBatches", "init_args": {"path": str(record)}}]
    if crash_at is not None:
        callbacks.append({"class_path": "tiny_systems.CrashAt", "init_args": {"step": crash_at}})
    if throttle:
        callbacks.append({"class_path": "tiny_systems.Throttle", "init_args": {"seconds": throttle}})
    args = ["fit", "--config", str(_config(tmp_path, throttle=0.0)),
            "--trainer.callbacks", json.dumps(callbacks),
            "--checkpoint.dirpath", str(tmp_path / name),
            f"--last.every_n_train_steps={1 if save_every_step else 0}",
            "--data.synthetic_size", json.dumps({"train": RAGGED_LINES, "val": 4, "test": 4}), *extra]
    return args, record


def _record_run(tmp_path: Path, name: str, *extra: str, **kw) -> Path:
    args, record = _record_args(tmp_path, name, *extra, **kw)
    cli_main(args)
    return record


RAGGED_LINES = TRAIN_LINES - 2  # the last batch of each epoch is short
NO_POSITION = "holds no training loader position"  # LastCheckpoint's warning


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, list[str]]:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["htr-lightning"])
        return read_batches(_record_run(tmp, "whole"))


@pytest.mark.parametrize("crash_at", [STEPS_PER_EPOCH + 2, STEPS_PER_EPOCH + 1],
                         ids=["mid_epoch", "epoch_end"])
def test_a_resumed_run_trains_the_batches_of_the_uninterrupted_one(tmp_path, monkeypatch, recwarn,
                                                                    caplog, uninterrupted, crash_at):
    """Killed after the save of step ``crash_at - 1`` (mid-epoch, or the epoch-end save), then
    resumed from that last.ckpt, with DataLoader workers fetching ahead: from the step after
    it, the run trains the same lines in the same batches as the run that was never
    interrupted (which had no workers), short last batch included, to the planned end."""
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    assert len(uninterrupted) == STEPS_PER_EPOCH * EPOCHS
    assert [len(uninterrupted[s]) for s in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)] == [2, 2]
    with pytest.raises(RuntimeError, match=f"crash at step {crash_at}"):
        _record_run(tmp_path, "run", "--data.num_workers", "1", crash_at=crash_at)
    last = tmp_path / "run" / "last.ckpt"
    assert _step(last) == crash_at - 1
    with caplog.at_level(logging.WARNING, logger="htr_lightning"):
        resumed = read_batches(_record_run(tmp_path, "resumed", "--data.num_workers", "1",
                                       "--checkpoint.dirpath", str(tmp_path / "run"), "--ckpt_path", str(last)))
    assert not [r for r in caplog.records if NO_POSITION in r.getMessage()]
    assert sorted(resumed) == list(range(crash_at, STEPS_PER_EPOCH * EPOCHS + 1))
    assert resumed == {s: uninterrupted[s] for s in resumed}
    assert not [w for w in recwarn if "not resumable" in str(w.message)]


@pytest.mark.parametrize("workers, group", [(0, False), (2, True)],
                         ids=["main_process", "process_group_with_workers"])
def test_sigterm_saves_last_ckpt_at_the_step_it_stopped(tmp_path, monkeypatch, uninterrupted,
                                                         workers, group):
    """A cluster's time limit or ``kill`` sends SIGTERM: the run stops after the step under
    way, last.ckpt holds that step (no periodic save here), so nothing is lost, and the exit
    status says the run did not finish. Resumed, it trains the batches of a run never
    stopped. Slurm signals the whole process group: the DataLoader workers get the SIGTERM
    too and must not take the main process down before it saves."""
    args, record = _record_args(tmp_path, "run", "--data.num_workers", str(workers), throttle=0.3,
                                save_every_step=False)
    run, stderr, sent = _signal_when([sys.executable, "-m", "htr_lightning.cli", *args],
                                     lambda: record.is_file() and len(read_batches(record)) >= 2,
                                     signal.SIGTERM, group=group)
    assert sent, stderr[-3000:]
    assert "killed by signal" not in stderr, stderr[-3000:]
    trained = max(read_batches(record))
    assert 2 <= trained < STEPS_PER_EPOCH, stderr[-3000:]  # stopped mid-epoch
    last = tmp_path / "run" / "last.ckpt"
    assert _step(last) == trained, stderr[-3000:]
    assert "SIGTERM: last.ckpt saved at step" in stderr
    assert run.returncode == 128 + signal.SIGTERM  # not 0: the run did not finish

    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    resumed = read_batches(_record_run(tmp_path, "resumed", "--checkpoint.dirpath", str(tmp_path / "run"),
                                   "--ckpt_path", str(last)))
    assert sorted(resumed) == list(range(trained + 1, STEPS_PER_EPOCH * EPOCHS + 1))
    assert resumed == {step: uninterrupted[step] for step in resumed}


@pytest.mark.parametrize("stop", ["sigterm", "error"])
def test_a_run_with_workers_stopped_inside_a_validation_exits(tmp_path, stop):
    """SIGTERM to the main process alone (``kill <pid>``), or an error, inside a validation of
    a fit with DataLoader workers: the run exits (143, or 1 with the error) instead of
    waiting forever on the training loader's workers, which Lightning's teardown leaves
    alive when it ends the validation loop, and which ignored the exit's SIGTERM."""
    marker = tmp_path / "validating"
    callbacks = [{"class_path": "tiny_systems.InValidation",
                  "init_args": {"marker": str(marker), "crash": stop == "error"}}]
    command = _fit(_config(tmp_path, throttle=0.0), "--trainer.callbacks", json.dumps(callbacks),
                   "--data.num_workers", "2", "--checkpoint.dirpath", str(tmp_path / "run"),
                   "--data.synthetic_size", json.dumps({"train": 8, "val": 40, "test": 4}))
    started = time.monotonic()
    run, stderr, sent = _signal_when(command, marker.is_file if stop == "sigterm" else lambda: False,
                                     signal.SIGTERM)
    assert time.monotonic() - started < 90, stderr[-3000:]
    assert sent == (stop == "sigterm")
    if stop == "sigterm":
        assert "SIGTERM during a validation" in stderr, stderr[-3000:]
        assert run.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    else:
        assert "crash inside a validation" in stderr, stderr[-3000:]
        assert run.returncode == 1, stderr[-3000:]
    assert "killed by signal" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]


def test_last_ckpt_holds_the_validation_that_ran_after_a_step_save(tmp_path, monkeypatch):
    """A step save on an epoch's last batch is followed by that epoch's validation, and
    ModelCheckpoint records the score at the epoch's end: last.ckpt must be written again
    after that, so that it carries the best score. (Left at an earlier state, a resume would
    judge best.ckpt against a stale score and could overwrite a better best.ckpt with a
    worse one.)"""
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    cli = cli_main(["fit", "--config", str(_config(tmp_path, throttle=0.0)),
                    "--trainer.max_epochs", "1", "--trainer.callbacks", "[]",
                    f"--last.every_n_train_steps={STEPS_PER_EPOCH}"])
    best_score = cli.trainer.checkpoint_callback.best_model_score
    assert best_score is not None
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last["global_step"] == STEPS_PER_EPOCH
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert state["best_model_score"] is not None
    assert float(state["best_model_score"]) == pytest.approx(float(best_score))


@pytest.mark.parametrize("val_check_interval, saves_per_epoch", [(1.0, 1), (0.5, 2)])
def test_last_ckpt_is_written_once_per_validation(tmp_path, monkeypatch, val_check_interval,
                                                   saves_per_epoch):
    """Once per epoch when validation runs at the epoch's end (the epoch-end save follows it
    at once); a validation within the epoch gets its own save."""
    import lightning.pytorch as pl

    writes = []
    save = pl.Trainer.save_checkpoint

    def counting_save(trainer, filepath, *args, **kwargs):
        writes.append((Path(filepath).name, trainer.global_step))
        return save(trainer, filepath, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", counting_save)
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    cli_main(["fit", "--config", str(_config(tmp_path, throttle=0.0)),
              "--trainer.max_epochs", "2", "--trainer.callbacks", "[]",
              f"--trainer.val_check_interval={val_check_interval}",
              "--last.every_n_train_steps=0"])
    last = [step for name, step in writes if name == "last.ckpt"]
    half = STEPS_PER_EPOCH // 2
    expected = {1: [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH],
                2: [half, STEPS_PER_EPOCH, STEPS_PER_EPOCH + half, 2 * STEPS_PER_EPOCH]}
    assert last == expected[saves_per_epoch]
    assert _step(tmp_path / "ckpt" / "last.ckpt") == 2 * STEPS_PER_EPOCH


def test_a_mid_epoch_checkpoint_without_a_loader_position_is_reported(tmp_path, monkeypatch, caplog):
    """A mid-epoch checkpoint written before loader positions were saved (here: the position
    removed) cannot resume its epoch where it stopped: the run restarts that epoch and says
    so. (The resumes of intact checkpoints above check that they do not.)"""
    monkeypatch.setattr(sys, "argv", ["htr-lightning"])
    crash_at = STEPS_PER_EPOCH + 2
    with pytest.raises(RuntimeError, match=f"crash at step {crash_at}"):
        _record_run(tmp_path, "run", crash_at=crash_at)
    state = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert state["HTRDataModule"]["batches_done"] == 1
    del state["HTRDataModule"]
    torch.save(state, tmp_path / "old.ckpt")
    with caplog.at_level(logging.WARNING, logger="htr_lightning"):
        _record_run(tmp_path, "old", "--trainer.max_epochs", "2", "--ckpt_path", str(tmp_path / "old.ckpt"))
    hits = [r.getMessage() for r in caplog.records if NO_POSITION in r.getMessage()]
    assert len(hits) == 1 and "stopped 1 batches into epoch 1" in hits[0], hits
