"""`train.data.sr_images`: super-resolution's images from folders or tfds; missing, corrupt and
too-small images named in one line."""

import numpy as np
import photos
import pytest
from PIL import Image

from train import tasks, trainer
from train.data import sources, sr_images

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return photos.write_photo_folders(tmp_path_factory.mktemp("photos"), skimage_data)


def test_missing_and_corrupt_images_are_named(folders, tmp_path):
    with pytest.raises(sources.DataError, match="image folder /nonexistent does not exist"):
        trainer.run(
            photos.sr_config_on(folders, train_data="/nonexistent"),
            str(tmp_path / "a"),
            tasks.super_resolution,
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.DataError, match="has no .png/.jpg/.jpeg images"):
        trainer.run(
            photos.sr_config_on(folders, eval_data=str(tmp_path / "empty")),
            str(tmp_path),
            tasks.super_resolution,
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    good = (folders / "train" / "rocket.png").read_bytes()
    (broken / "rocket.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(sources.DataError, match=r"cannot read image .*broken/rocket.png"):
        trainer.run(
            photos.sr_config_on(folders, train_data=str(broken)),
            str(tmp_path / "b"),
            tasks.super_resolution,
        )
    with pytest.raises(sources.DataError, match="smaller than patch_size=30"):
        trainer.run(
            photos.sr_config_on(folders, patch_size=30), str(tmp_path / "c"), tasks.super_resolution
        )
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((40, 14, 3), np.uint8)).save(tiny / "thin.png")
    with pytest.raises(sources.DataError, match=r"image thin \(40x14\) of .*tiny is too small to"):
        trainer.run(
            photos.sr_config_on(folders, eval_data=str(tiny)),
            str(tmp_path / "d"),
            tasks.super_resolution,
        )


def test_tfds_div2k_by_name(folders, tmp_path):
    """DIV2K's HR images through tfds (its mock: random pixels, random sizes)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = photos.sr_config_on(
        folders, train_data="tfds:div2k", eval_data="tfds:div2k", num_train_steps=2
    )
    with tfds.testing.mock_data(num_examples=2):  # 43x33 and 26x28: big enough
        result = trainer.run(config, str(tmp_path / "w"), tasks.super_resolution)
    assert result["step"] == 2 and np.isfinite(result["div2k_psnr"])
    with pytest.raises(sources.DataError, match="tfds dataset 'div2k' split 'train' is not"):
        sr_images.open_hr("tfds:div2k", "train", data_dir=str(tmp_path / "none"))
