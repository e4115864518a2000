"""The programs `train.sr` and `train.upscale` end to end, as a user runs them, on pieces
of real photographs; the task itself is tested in tests/test_super_resolution.py."""

import os
import pathlib
import subprocess
import sys

import photos
import pytest
from conftest import CACHE_DIR
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")
ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return photos.write_photo_folders(tmp_path_factory.mktemp("photos"), skimage_data)


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
