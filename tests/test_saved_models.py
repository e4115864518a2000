"""`train.saved_models`: checkpoints opened by workdir, path or step (closed on errors too),
and a saved run as a model. The workdir is tests/data/workdir_before_trainer (one LeNet-5-BN
step)."""

import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpointing, config_checks, saved_models

WORKDIR = pathlib.Path(__file__).parent / "data" / "workdir_before_trainer"


def test_opens_by_workdir_path_or_step():
    with saved_models.open_checkpoint(WORKDIR) as (mngr, step):
        assert step == 1 and list(mngr.all_steps()) == [1]
    with saved_models.open_checkpoint(WORKDIR, step=1) as (_, step):
        assert step == 1
    with saved_models.open_checkpoint(checkpoint=str(WORKDIR / "checkpoints" / "1")) as (_, step):
        assert step == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of --workdir and --checkpoint"),
        ({"workdir": "/nonexistent"}, "no checkpoints in /nonexistent/checkpoints"),
        ({"workdir": WORKDIR, "step": 7}, r"no checkpoint 7 in .* \(steps there: \[1\]\)"),
        ({"checkpoint": str(WORKDIR / "checkpoints")}, "is not a checkpoint"),
        ({"checkpoint": str(WORKDIR / "checkpoints" / "1"), "step": 1}, "not with --checkpoint"),
    ],
)
def test_bad_locations_are_named(kwargs, message):
    with pytest.raises(config_checks.ConfigError, match=message):
        with saved_models.open_checkpoint(**kwargs):
            pass


def test_an_empty_checkpoint_directory_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(config_checks.ConfigError, match="it has none"):
        with saved_models.open_checkpoint(tmp_path):
            pass


def test_the_manager_is_closed_on_errors_too(monkeypatch, tmp_path):
    closed = []
    real = checkpointing.manager

    def manager(*args, **kwargs):
        mngr = real(*args, **kwargs)
        close = mngr.close
        mngr.close = lambda: (closed.append(True), close())
        return mngr

    monkeypatch.setattr(checkpointing, "manager", manager)
    with pytest.raises(RuntimeError, match="inside"):
        with saved_models.open_checkpoint(WORKDIR):
            raise RuntimeError("inside")
    assert closed == [True]
    with pytest.raises(config_checks.ConfigError):
        with saved_models.open_checkpoint(WORKDIR, step=7):
            pass
    assert closed == [True, True]


def test_a_saved_run_is_a_model(tmp_path):
    shutil.copytree(WORKDIR, tmp_path / "w")
    model, variables, config = saved_models.load_model(tmp_path / "w")
    assert config.model == "lenet5_bn" and config.layer == "adder"
    logits = model.apply(variables, jnp.zeros((2, 28, 28, 1)), train=False)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    saved, path = saved_models.saved_config(tmp_path / "w")
    assert saved.to_dict() == config.to_dict() and path == tmp_path / "w" / "checkpoints" / "1"
