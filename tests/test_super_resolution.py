"""The super-resolution task (`train.tasks.super_resolution`, `train.super_resolution`):
training on real photographs (cut small), evaluation beside bicubic, exact resume, another
network refused, bad configs in one line. `tests/test_sr_images.py` and
`tests/test_upscale.py` test the data and the tiling, `tests/test_sr.py` the programs."""

import json

import jax
import numpy as np
import photos
import pytest

from train import checkpointing, config_checks, super_resolution, tasks, trainer

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return photos.write_photo_folders(tmp_path_factory.mktemp("photos"), skimage_data)


def _state(workdir):
    _, variables, config, step = super_resolution.load(workdir)
    return jax.device_get(variables), step


@pytest.fixture(scope="module")
def uninterrupted(folders, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    result = trainer.run(photos.sr_config_on(folders), str(workdir), tasks.super_resolution)
    return workdir, result


def test_trains_and_evaluates_every_set_beside_bicubic(uninterrupted):
    workdir, result = uninterrupted
    assert result["step"] == 6  # 3 images x repeat 4 / batch 4 = 3 steps an epoch, 2 epochs
    assert result["psnr"] == result["test_psnr"] and result["ssim"] == result["test_ssim"]
    assert 10 < result["test_bicubic_psnr"] < 50 and 0 < result["test_bicubic_ssim"] < 1
    assert json.loads((workdir / "results.json").read_text()) == result
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    evals = [x for x in lines if x["split"] == "eval"]
    assert [x["step"] for x in evals] == [3, 6]
    train = [x for x in lines if x["split"] == "train"]
    assert all(np.isfinite(x["loss"]) and "psnr" in x for x in train)
    assert train[-1]["loss"] < train[0]["loss"]
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [3, 6]


def test_resume_after_a_stop_is_bitwise(folders, uninterrupted, tmp_path):
    whole, whole_result = uninterrupted
    first = trainer.run(
        photos.sr_config_on(folders, num_train_steps=4), str(tmp_path), tasks.super_resolution
    )
    assert first["step"] == 4
    second = trainer.run(photos.sr_config_on(folders), str(tmp_path), tasks.super_resolution)
    assert second == whole_result
    (got, step), (want, _) = _state(tmp_path), _state(whole)
    assert step == 6
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    # The optimizer state too (Adam's moments and count).
    mngrs = [checkpointing.manager(checkpointing.checkpoint_dir(w), read_only=True)
             for w in (tmp_path, whole)]  # fmt: skip
    abstract = super_resolution.build(photos.sr_config_on(folders)).abstract
    restored = [checkpointing.restore(m, 6, abstract)[0] for m in mngrs]
    for a, b in zip(jax.tree.leaves(restored[0].opt_state), jax.tree.leaves(restored[1].opt_state),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    for m in mngrs:
        m.close()


def test_another_network_is_not_resumed(folders, uninterrupted):
    workdir, _ = uninterrupted
    with pytest.raises(config_checks.ConfigError, match="features=8 there, 16 here"):
        trainer.run(photos.sr_config_on(folders, features=16), str(workdir), tasks.super_resolution)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": "srcnn"}, "config.model='srcnn' is invalid: expected one of 'edsr', 'vdsr'"),
        ({"scale": 5}, "config.scale=5 is invalid: expected one of 2, 3, 4"),
        ({"train_data": ""}, "config.train_data='' is invalid"),
        ({"patch_size": 2}, "config.patch_size=2 is invalid: expected an integer >= 4"),
        ({"b2": 1.0}, "config.b2=1.0 is invalid: expected a number in [0, 1)"),
        ({"repeat": 0}, "config.repeat=0 is invalid: expected an integer >= 1"),
        ({"batch_size": 64}, "is larger than the 12 training examples of the training data"),
    ],
)
def test_bad_configs_are_one_line(folders, tmp_path, overrides, expected):
    with pytest.raises(config_checks.ConfigError) as e:
        trainer.run(
            photos.sr_config_on(folders, **overrides), str(tmp_path), tasks.super_resolution
        )
    assert expected in str(e.value) and "\n" not in str(e.value)
