"""train.sr and the super-resolution task (`train.tasks.super_resolution`,
`train.super_resolution`): training on real photographs (cut small), exact resume,
evaluation, bad configs in one line, the programs end to end. `tests/test_sr_images.py` and
`tests/test_upscale.py` test the data and the tiling."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import photos
import pytest
from conftest import CACHE_DIR
from PIL import Image

from train import checkpointing, config_checks, super_resolution, tasks, trainer

skimage_data = pytest.importorskip("skimage.data")
ROOT = pathlib.Path(__file__).resolve().parents[1]


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


def _run(module, *args):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE_DIR}
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_programs_train_then_upscale_a_photo(folders, tmp_path):
    workdir = tmp_path / "w"
    args = [
        f"--workdir={workdir}", "--config=train/configs/sr.py:vdsr,3", "--config.depth=4",
        "--config.features=8", "--config.patch_size=6", "--config.batch_size=4",
        "--config.num_train_steps=2", "--config.worker_count=0",
        f"--config.train_data={folders / 'train'}", f"--config.eval_data={folders / 'test'}",
    ]  # fmt: skip
    proc = _run("train.sr", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final evaluation (step 2): test " in proc.stdout and "(bicubic " in proc.stdout
    out = tmp_path / "big.png"
    proc = _run("train.upscale", f"--workdir={workdir}", "--tile=12", "--margin=4",
                str(folders / "test" / "cam.jpg"), str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Image.open(out).size == (120, 120)
    assert "(40x40) -> " in proc.stdout and "vdsr x3 (AdderSR), step 2" in proc.stdout
    bad = _run("train.sr", *args, "--config.scale=7")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: config.scale=7 is invalid")
    missing = _run("train.upscale", f"--workdir={tmp_path / 'none'}", "a.png", "b.png")
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: no checkpoints")
