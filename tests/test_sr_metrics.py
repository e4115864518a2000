"""train.sr_metrics against independent statements: PIL's bicubic (Keys a = -0.5, the same
pixel centres, antialiased when shrinking), scikit-image's SSIM with Wang et al.'s
settings, PSNR and luma by hand, and the protocol's edge cases."""

import math

import numpy as np
import pytest
from PIL import Image

from train import sr_metrics

skimage_metrics = pytest.importorskip("skimage.metrics")


def _pil_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    pil = Image.fromarray(image.astype(np.float32), "F")
    return np.asarray(pil.resize((width, height), Image.BICUBIC), np.float64)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shrink", [True, False])
def test_imresize_is_pil_bicubic_on_the_symmetric_extension(scale, shrink):
    """MATLAB's boundary is the image mirrored with its edge repeated (numpy's "symmetric"):
    PIL on the mirrored image, cropped back, is MATLAB's result on every pixel."""
    rng = np.random.default_rng(scale)
    image = rng.uniform(0, 255, size=(12 * scale, 11 * scale))  # sizes a multiple of scale
    pad = 12 * scale  # whole output pixels on both grids
    padded = np.pad(image, pad, mode="symmetric")
    h, w = image.shape
    if shrink:
        ours = sr_metrics.imresize(image, 1 / scale)
        pil = _pil_resize(padded, padded.shape[0] // scale, padded.shape[1] // scale)
        k = pad // scale
    else:
        ours = sr_metrics.imresize(image, scale)
        pil = _pil_resize(padded, padded.shape[0] * scale, padded.shape[1] * scale)
        k = pad * scale
    assert ours.shape == (math.ceil(h * (1 / scale if shrink else scale) - 1e-9),) + ours.shape[1:]
    np.testing.assert_allclose(ours, pil[k : k + ours.shape[0], k : k + ours.shape[1]], atol=1e-3)


def test_imresize_reproduces_polynomials_in_the_interior():
    """Keys' a = -0.5 cubic reproduces quadratics; stretched for antialiasing it still
    reproduces linear ramps (its weights are symmetric and sum to one)."""
    y, x = np.mgrid[0:40, 0:36].astype(np.float64)
    quadratic = 0.05 * x**2 + 0.3 * x * y + 2 * y
    up = sr_metrics.imresize(quadratic, 2)
    yy, xx = (np.mgrid[0:80, 0:72] + 0.5) / 2 - 0.5  # output centres in input pixels
    want = 0.05 * xx**2 + 0.3 * xx * yy + 2 * yy
    np.testing.assert_allclose(up[6:-6, 6:-6], want[6:-6, 6:-6], atol=1e-9)
    ramp = 3 * x - 2 * y + 7
    down = sr_metrics.imresize(ramp, 1 / 4)
    yy, xx = np.mgrid[0:10, 0:9] * 4 + 1.5
    np.testing.assert_allclose(down[2:-2, 2:-2], (3 * xx - 2 * yy + 7)[2:-2, 2:-2], atol=1e-9)


def test_imresize_uint8_rounds_and_clips_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(17, 13, 3), dtype=np.uint8)  # odd sizes
    small = sr_metrics.imresize(image, 1 / 2)
    assert small.dtype == np.uint8 and small.shape == (9, 7, 3)  # ceil, as MATLAB
    exact = sr_metrics.imresize(image.astype(np.float64), 1 / 2)
    np.testing.assert_array_equal(small, np.clip(np.round(exact), 0, 255))
    edge = np.zeros((8, 8))
    edge[:, 4:] = 255
    ringing = sr_metrics.imresize(edge, 2)  # the cubic overshoots a step; floats stay as is
    assert ringing.max() > 255 and ringing.min() < 0
    grey = sr_metrics.imresize(image[:, :, 0], 3)
    assert grey.shape == (51, 39) and grey.dtype == np.uint8
    np.testing.assert_array_equal(sr_metrics.imresize(image[:, :, :1], 3)[:, :, 0], grey)
    assert sr_metrics.imresize(image, shape=(5, 20)).shape == (5, 20, 3)
    constant = np.full((9, 9), 77, np.uint8)
    np.testing.assert_array_equal(sr_metrics.imresize(constant, 1 / 3), 77)


def test_imresize_refuses_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of scale and shape"):
        sr_metrics.imresize(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="scale must be > 0"):
        sr_metrics.imresize(np.zeros((4, 4)), -2)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        sr_metrics.imresize(np.zeros(4), 2)


def test_modcrop():
    image = np.arange(7 * 10).reshape(7, 10)
    assert sr_metrics.modcrop(image, 3).shape == (6, 9)
    np.testing.assert_array_equal(sr_metrics.modcrop(image, 3), image[:6, :9])
    assert sr_metrics.modcrop(np.zeros((8, 8, 3)), 4).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="smaller than scale 4"):
        sr_metrics.modcrop(np.zeros((3, 9)), 4)


def test_rgb_to_y_is_bt601_luma():
    pixel = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]])
    np.testing.assert_allclose(
        sr_metrics.rgb_to_y(pixel.astype(np.uint8))[0],
        [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0],
        atol=1e-12,
    )
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(sr_metrics.rgb_to_y(grey), grey)
    np.testing.assert_array_equal(sr_metrics.rgb_to_y(grey[:, :, None]), grey)


def test_psnr_by_hand():
    reference = np.zeros((4, 4), np.uint8)
    estimate = reference.copy()
    estimate[1, 2] = 255
    # MSE = 255^2 / 16: PSNR = 10 log10(16).
    assert sr_metrics.psnr(reference, estimate, crop_border=0) == pytest.approx(10 * math.log10(16))
    assert sr_metrics.psnr(reference, estimate, crop_border=1) == pytest.approx(10 * math.log10(4))
    assert sr_metrics.psnr(reference, reference, crop_border=0) == math.inf
    # On Y only the luma weight of a channel counts: blue off by 51 is Y off by 24.966 / 5.
    rgb = np.full((6, 6, 3), 100, np.uint8)
    off = rgb.copy()
    off[..., 2] += 51
    want = 10 * math.log10(255**2 / (24.966 / 5) ** 2)
    assert sr_metrics.psnr(rgb, off, crop_border=2) == pytest.approx(want)
    want_rgb = 10 * math.log10(255**2 / (51**2 / 3))
    assert sr_metrics.psnr(rgb, off, crop_border=2, y_channel=False) == pytest.approx(want_rgb)


def test_ssim_is_scikit_image_with_wang_settings():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(40, 37), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    want = skimage_metrics.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert sr_metrics.ssim(a, b, crop_border=0) == pytest.approx(want, abs=1e-12)
    # Cropped: the same on the cropped images.
    want = skimage_metrics.structural_similarity(
        a[3:-3, 3:-3], b[3:-3, 3:-3], gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )  # fmt: skip
    assert sr_metrics.ssim(a, b, crop_border=3) == pytest.approx(want, abs=1e-12)
    assert sr_metrics.ssim(a, a, crop_border=0) == pytest.approx(1.0)
    # RGB on Y: the SSIM of the two luma images.
    rgb_a = rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    rgb_b = np.clip(rgb_a + rng.normal(0, 8, rgb_a.shape), 0, 255).astype(np.uint8)
    want = skimage_metrics.structural_similarity(
        sr_metrics.rgb_to_y(rgb_a), sr_metrics.rgb_to_y(rgb_b), gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False, data_range=255,
    )  # fmt: skip
    assert sr_metrics.ssim(rgb_a, rgb_b, crop_border=0) == pytest.approx(want, abs=1e-12)


def test_metrics_refuse_mismatched_or_tiny_images():
    with pytest.raises(ValueError, match="differ in shape"):
        sr_metrics.psnr(np.zeros((8, 8)), np.zeros((8, 9)), crop_border=0)
    with pytest.raises(ValueError, match="crop_border must be an int >= 0"):
        sr_metrics.psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop_border=-1)
    with pytest.raises(ValueError, match="nothing is left"):
        sr_metrics.psnr(np.zeros((8, 8)), np.zeros((8, 8)), crop_border=4)
    with pytest.raises(ValueError, match="at least 11x11"):
        sr_metrics.ssim(np.zeros((14, 14)), np.zeros((14, 14)), crop_border=2)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        sr_metrics.psnr(np.zeros((8, 8, 2)), np.zeros((8, 8, 2)), crop_border=0)
