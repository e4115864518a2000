"""Pieces of real photographs (scikit-image's) in folders, and a small SR config on them,
for the tests of `train.sr`, `train.data.sr_images` and `train.upscale`."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from train.configs import sr as sr_config

__all__ = ["sr_config_on", "write_photo_folders"]


def _photo(skimage_data, name: str, box) -> np.ndarray:
    image = np.asarray(getattr(skimage_data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=-1)
    top, left, h, w = box
    return np.ascontiguousarray(image[top : top + h, left : left + w, :3])


def write_photo_folders(root: pathlib.Path, skimage_data) -> pathlib.Path:
    """root/train: three photographs to train on; root/test: two (one grey) to test on; odd
    sizes so modcrop has work to do."""
    (root / "train").mkdir()
    (root / "test").mkdir()
    for name, box in [("astronaut", (40, 150, 41, 38)), ("coffee", (100, 200, 36, 44)),
                      ("rocket", (150, 250, 40, 40))]:  # fmt: skip
        Image.fromarray(_photo(skimage_data, name, box)).save(root / "train" / f"{name}.png")
    chelsea = _photo(skimage_data, "chelsea", (60, 120, 37, 45))
    Image.fromarray(chelsea).save(root / "test" / "chelsea.png")
    camera = _photo(skimage_data, "camera", (100, 100, 40, 40))[:, :, 0]
    Image.fromarray(camera).save(root / "test" / "cam.jpg")
    return root


def sr_config_on(folders: pathlib.Path, **overrides):
    """EDSR x2 with one block of 8 features on `write_photo_folders`' photographs: 3 steps an
    epoch (3 images x repeat 4 / batch 4), 2 epochs, no grain workers."""
    config = sr_config.get_config("edsr,2")
    config.unlock()
    config.update(
        train_data=str(folders / "train"), eval_data=str(folders / "test"), num_blocks=1,
        features=8, patch_size=8, batch_size=4, repeat=4, num_epochs=2, log_every_steps=1,
        worker_count=0, progress_bar=False, learning_rate=1e-3,
    )  # fmt: skip
    config.update(overrides)
    return config
