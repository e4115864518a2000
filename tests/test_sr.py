"""train.sr, train.super_resolution, train.sr_data and train.upscale: training on real
photographs (cut small), exact resume, evaluation, bad input in one line, tiled upscaling."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import CACHE_DIR
from PIL import Image

from train import (
    checkpointing,
    config_checks,
    data_sources,
    sr_data,
    super_resolution,
    tasks,
    trainer,
)
from train import upscale as upscale_program
from train.configs import sr as sr_config

skimage_data = pytest.importorskip("skimage.data")
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _photo(name: str, box) -> np.ndarray:
    image = np.asarray(getattr(skimage_data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    top, left, h, w = box
    return np.ascontiguousarray(image[top : top + h, left : left + w, :3])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Pieces of real photographs: three to train on, two (one grey) to test on; odd sizes
    so modcrop has work to do."""
    root = tmp_path_factory.mktemp("photos")
    (root / "train").mkdir()
    (root / "test").mkdir()
    for name, box in [("astronaut", (40, 150, 41, 38)), ("coffee", (100, 200, 36, 44)),
                      ("rocket", (150, 250, 40, 40))]:  # fmt: skip
        Image.fromarray(_photo(name, box)).save(root / "train" / f"{name}.png")
    Image.fromarray(_photo("chelsea", (60, 120, 37, 45))).save(root / "test" / "chelsea.png")
    Image.fromarray(_photo("camera", (100, 100, 40, 40))[:, :, 0]).save(root / "test" / "cam.jpg")
    return root


def _config(folders, **overrides):
    config = sr_config.get_config("edsr,2")
    config.unlock()
    config.update(
        train_data=str(folders / "train"), eval_data=str(folders / "test"), num_blocks=1,
        features=8, patch_size=8, batch_size=4, repeat=4, num_epochs=2, log_every_steps=1,
        worker_count=0, progress_bar=False, learning_rate=1e-3,
    )  # fmt: skip
    config.update(overrides)
    return config


def _state(workdir):
    _, variables, config, step = super_resolution.load(workdir)
    return jax.device_get(variables), step


@pytest.fixture(scope="module")
def uninterrupted(folders, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("whole")
    result = trainer.run(_config(folders), str(workdir), tasks.super_resolution)
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
    first = trainer.run(_config(folders, num_train_steps=4), str(tmp_path), tasks.super_resolution)
    assert first["step"] == 4
    second = trainer.run(_config(folders), str(tmp_path), tasks.super_resolution)
    assert second == whole_result
    (got, step), (want, _) = _state(tmp_path), _state(whole)
    assert step == 6
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    # The optimizer state too (Adam's moments and count).
    mngrs = [checkpointing.manager(checkpointing.checkpoint_dir(w), read_only=True)
             for w in (tmp_path, whole)]  # fmt: skip
    abstract = super_resolution.build(_config(folders)).abstract
    restored = [checkpointing.restore(m, 6, abstract)[0] for m in mngrs]
    for a, b in zip(jax.tree.leaves(restored[0].opt_state), jax.tree.leaves(restored[1].opt_state),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    for m in mngrs:
        m.close()


def test_another_network_is_not_resumed(folders, uninterrupted):
    workdir, _ = uninterrupted
    with pytest.raises(config_checks.ConfigError, match="features=8 there, 16 here"):
        trainer.run(_config(folders, features=16), str(workdir), tasks.super_resolution)


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
        trainer.run(_config(folders, **overrides), str(tmp_path), tasks.super_resolution)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_missing_and_corrupt_images_are_named(folders, tmp_path):
    with pytest.raises(data_sources.DataError, match="image folder /nonexistent does not exist"):
        trainer.run(
            _config(folders, train_data="/nonexistent"), str(tmp_path / "a"), tasks.super_resolution
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(data_sources.DataError, match="has no .png/.jpg/.jpeg images"):
        trainer.run(
            _config(folders, eval_data=str(tmp_path / "empty")),
            str(tmp_path),
            tasks.super_resolution,
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    good = (folders / "train" / "rocket.png").read_bytes()
    (broken / "rocket.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(data_sources.DataError, match=r"cannot read image .*broken/rocket.png"):
        trainer.run(
            _config(folders, train_data=str(broken)), str(tmp_path / "b"), tasks.super_resolution
        )
    with pytest.raises(data_sources.DataError, match="smaller than patch_size=30"):
        trainer.run(_config(folders, patch_size=30), str(tmp_path / "c"), tasks.super_resolution)
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((40, 14, 3), np.uint8)).save(tiny / "thin.png")
    with pytest.raises(
        data_sources.DataError, match=r"image thin \(40x14\) of .*tiny is too small to"
    ):
        trainer.run(
            _config(folders, eval_data=str(tiny)), str(tmp_path / "d"), tasks.super_resolution
        )


def test_tiled_upscaling_equals_the_whole_image(uninterrupted, folders):
    for length, tile, margin in [(37, 10, 3), (9, 10, 3), (40, 16, 5), (11, 7, 3)]:
        plan = upscale_program.tile_plan(length, tile, margin)
        covered = [i for _, lo, hi in plan for i in range(lo, hi)]
        assert covered == list(range(length))
        for start, lo, hi in plan:  # the kept part lies margin inside the tile, but at edges
            assert start <= lo and hi <= start + min(tile, length)
            assert lo == 0 or lo - start >= margin
            assert hi == length or start + tile - hi >= margin
    model, variables, config, _ = super_resolution.load(uninterrupted[0])
    predict = super_resolution.jit_predict(model)
    image = sr_data.read_image(folders / "test" / "chelsea.png")
    whole = super_resolution.super_resolve(predict, variables, image)
    # EDSR with 1 block: 5 3x3 layers before the upsampler, receptive radius 5 LR pixels.
    tiled = upscale_program.upscale(predict, variables, image, 2, tile=16, margin=6)
    assert tiled.shape == whole.shape == (74, 90, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float rounding


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


def test_tfds_div2k_by_name(folders, tmp_path):
    """DIV2K's HR images through tfds (its mock: random pixels, random sizes)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = _config(folders, train_data="tfds:div2k", eval_data="tfds:div2k", num_train_steps=2)
    with tfds.testing.mock_data(num_examples=2):  # 43x33 and 26x28: big enough
        result = trainer.run(config, str(tmp_path / "w"), tasks.super_resolution)
    assert result["step"] == 2 and np.isfinite(result["div2k_psnr"])
    with pytest.raises(data_sources.DataError, match="tfds dataset 'div2k' split 'train' is not"):
        sr_data.open_hr("tfds:div2k", "train", data_dir=str(tmp_path / "none"))
