"""`train.upscale`: the tile plan covers the image once, and tiles with a margin give the
whole image's super-resolution."""

import jax
import numpy as np
import photos
import pytest

from train import super_resolution
from train import upscale as upscale_program
from train.data import sr_images

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return photos.write_photo_folders(tmp_path_factory.mktemp("photos"), skimage_data)


def test_tiled_upscaling_equals_the_whole_image(folders):
    for length, tile, margin in [(37, 10, 3), (9, 10, 3), (40, 16, 5), (11, 7, 3)]:
        plan = upscale_program.tile_plan(length, tile, margin)
        covered = [i for _, lo, hi in plan for i in range(lo, hi)]
        assert covered == list(range(length))
        for start, lo, hi in plan:  # the kept part lies margin inside the tile, but at edges
            assert start <= lo and hi <= start + min(tile, length)
            assert lo == 0 or lo - start >= margin
            assert hi == length or start + tile - hi >= margin
    # Any weights do: the network as initialised.
    built = super_resolution.build(photos.sr_config_on(folders))
    state = built.init(jax.random.key(0))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    predict = super_resolution.jit_predict(built.model)
    image = sr_images.read_image(folders / "test" / "chelsea.png")
    whole = super_resolution.super_resolve(predict, variables, image)
    # EDSR with 1 block: 5 3x3 layers before the upsampler, receptive radius 5 LR pixels.
    tiled = upscale_program.upscale(predict, variables, image, 2, tile=16, margin=6)
    assert tiled.shape == whole.shape == (74, 90, 3)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float rounding
