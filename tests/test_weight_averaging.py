"""Weight averaging (EMA) through Lightning's own callback, added on the command line.

We write no averaging code: ``--trainer.callbacks+=EMAWeightAveraging`` works with our CLI.
These tests hold the parts of the contract that are ours: the best checkpoint is chosen by the
``val_cer`` of the averaged weights and holds those weights, our loaders read them, and a resume
carries the average on. ``htr_lightning.averaging.EMA`` is that callback with a delayed start
that uses the raw weights until the average begins (the tests after the first two), and
``fit`` warns when Lightning's own class is given a delayed start (the last test).
"""
import warnings
from pathlib import Path

import pytest
import torch
from tiny_systems import tiny_cli_args

from htr_lightning.checkpoints import load_checkpoint_file
from htr_lightning.cli import cli_main as main
from htr_lightning.models.loading import load_system

EMA = ["--trainer.callbacks+=EMAWeightAveraging", "--trainer.callbacks.decay=0.5",
       "--model.scheduler=constant", "--trainer.val_check_interval=2"]
pytestmark = pytest.mark.usefixtures("cli_argv")


def _differing(a: dict, b: dict) -> int:
    assert a.keys() == b.keys()
    return sum(not torch.equal(a[k], b[k]) for k in a)


def test_ema_best_checkpoint_holds_the_averaged_weights_it_was_chosen_by(tmp_path):
    cli = main(["fit", *tiny_cli_args(tmp_path), *EMA, "--trainer.max_steps=6"])
    chooser = cli.trainer.checkpoint_callback
    best, last = Path(chooser.best_model_path), tmp_path / "ckpt" / "last.ckpt"
    assert best.is_file() and last.is_file()

    saved = load_checkpoint_file(last)
    assert saved["global_step"] == 6 and int(saved["averaging_state"]["n_averaged"]) == 6
    # The file's weights are the average, the raw ones ride along for a resume.
    assert _differing(saved["state_dict"], saved["current_model_state"]) > 0
    system = load_system(last)
    assert _differing(system.state_dict(), saved["state_dict"]) == 0

    # Validating best.ckpt without the callback gives exactly the score it was chosen by.
    val = main(["validate", *tiny_cli_args(tmp_path), f"--ckpt_path={best}"])
    assert float(val.trainer.callback_metrics["val_cer"]) == pytest.approx(float(chooser.best_model_score))


def test_ema_resume_from_last_continues_the_average(tmp_path):
    main(["fit", *tiny_cli_args(tmp_path), *EMA, "--trainer.max_steps=4"])
    last = tmp_path / "ckpt" / "last.ckpt"
    raw_before = load_checkpoint_file(last)["current_model_state"]

    main(["fit", *tiny_cli_args(tmp_path), *EMA, "--trainer.max_steps=6", f"--ckpt_path={last}"])
    saved = load_checkpoint_file(last)
    assert saved["global_step"] == 6
    assert int(saved["averaging_state"]["n_averaged"]) == 6  # 4 before the resume, 2 after
    assert _differing(saved["current_model_state"], raw_before) > 0  # training went on from the raw weights


DELAYED = ["--trainer.callbacks+=htr_lightning.averaging.EMA", "--trainer.callbacks.decay=0.5",
           "--model.scheduler=constant", "--trainer.val_check_interval=2"]


def test_delayed_ema_validates_saves_and_keeps_the_raw_weights_until_it_starts(tmp_path):
    # The average would start at step 100; the run ends at step 4, with two validations before.
    cli = main(["fit", *tiny_cli_args(tmp_path), *DELAYED,
                "--trainer.callbacks.update_starting_at_step=100", "--trainer.max_steps=4"])
    saved = load_checkpoint_file(tmp_path / "ckpt" / "last.ckpt")
    assert int(saved["averaging_state"]["n_averaged"]) == 0
    # The file holds the trained weights, not the initial copy the empty average keeps,
    assert _differing(saved["state_dict"], saved["current_model_state"]) == 0
    # and so does the model once training has ended.
    assert _differing(cli.model.state_dict(), saved["state_dict"]) == 0

    # best.ckpt was chosen by the val_cer of the weights it holds.
    chooser = cli.trainer.checkpoint_callback
    val = main(["validate", *tiny_cli_args(tmp_path), f"--ckpt_path={chooser.best_model_path}"])
    assert float(val.trainer.callback_metrics["val_cer"]) == pytest.approx(float(chooser.best_model_score))


def test_delayed_ema_starts_from_the_weights_of_its_first_update_and_resumes(tmp_path):
    args = [*tiny_cli_args(tmp_path), *DELAYED, "--trainer.callbacks.update_starting_at_step=3"]
    main(["fit", *args, "--trainer.max_steps=2"])  # stops before the start
    last = tmp_path / "ckpt" / "last.ckpt"
    assert int(load_checkpoint_file(last)["averaging_state"]["n_averaged"]) == 0

    cli = main(["fit", *args, "--trainer.max_steps=6", f"--ckpt_path={last}"])
    saved = load_checkpoint_file(last)
    # Zero-based step indices 3, 4 and 5 updated the average; from then on it is the weights.
    assert int(saved["averaging_state"]["n_averaged"]) == 3
    assert _differing(saved["state_dict"], saved["current_model_state"]) > 0
    assert _differing(cli.model.state_dict(), saved["state_dict"]) == 0


def test_evaluating_with_the_training_config_uses_the_saved_weights_without_a_warning(tmp_path):
    cli = main(["fit", *tiny_cli_args(tmp_path), *DELAYED,
                "--trainer.callbacks.update_starting_at_step=1", "--trainer.max_steps=6"])
    chooser = cli.trainer.checkpoint_callback
    assert int(load_checkpoint_file(chooser.best_model_path)["averaging_state"]["n_averaged"]) > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = main(["validate", *tiny_cli_args(tmp_path), *DELAYED,
                    f"--ckpt_path={chooser.best_model_path}"])
    assert float(val.trainer.callback_metrics["val_cer"]) == pytest.approx(float(chooser.best_model_score))
    assert not [w for w in caught if "WeightAveraging" in str(w.message)]


@pytest.mark.parametrize("callback, start, warned", [("EMAWeightAveraging", 100, True),
                                                     ("EMAWeightAveraging", None, False),
                                                     ("htr_lightning.averaging.EMA", 100, False)])
def test_a_delayed_lightning_ema_is_named_with_its_fix(tmp_path, caplog, callback, start, warned):
    delay = [] if start is None else [f"--trainer.callbacks.update_starting_at_step={start}"]
    main([*tiny_cli_args(tmp_path), f"--trainer.callbacks+={callback}", *delay], run=False)
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("#21724" in m and "htr_lightning.averaging.EMA" in m for m in messages) is warned
