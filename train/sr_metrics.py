"""The super-resolution evaluation protocol (EDSR, VDSR and AdderSR tables): MATLAB bicubic
``imresize``, the Y channel of ITU-R BT.601, PSNR and SSIM on it with the border cropped.

Images are ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` arrays, uint8 or float, in [0, 255].
The protocol of the tables:

1. ``hr = modcrop(hr, s)``; ``lr = imresize(hr, 1 / s)`` (uint8 in, uint8 out, as MATLAB).
2. The network's output is rounded and clipped to uint8 (`quantize`).
3. ``psnr(hr, sr, crop_border=s)`` and ``ssim(hr, sr, crop_border=s)`` on the Y channel.

Y is MATLAB's ``rgb2ycbcr`` luma, ``16 + (65.481 R + 128.553 G + 24.966 B) / 255``, left
unrounded (as BasicSR's evaluation; MATLAB's uint8 ``rgb2ycbcr`` rounds it, which moves a
PSNR by about 0.01 dB). A grey image is its own Y.
"""

from __future__ import annotations

import math

import numpy as np

from adderjax import resize

__all__ = ["imresize", "modcrop", "psnr", "quantize", "rgb_to_y", "ssim"]

# MATLAB rgb2ycbcr's luma row, for R, G, B in [0, 255].
Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0
Y_OFFSET = 16.0
# Wang et al. 2004: an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255.
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03
PIXEL_MAX = 255.0


def _image(image, what: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 3):
        return array
    if array.ndim == 2:
        return array[:, :, None]
    raise ValueError(f"{what} must be (H, W), (H, W, 1) or (H, W, 3), got shape {array.shape}")


def modcrop(image, scale: int) -> np.ndarray:
    """The top-left part of `image` whose height and width are multiples of `scale`."""
    array = np.asarray(image)
    if array.ndim < 2:
        raise ValueError(f"image must be at least 2-d, got shape {array.shape}")
    h, w = array.shape[0] - array.shape[0] % scale, array.shape[1] - array.shape[1] % scale
    if h == 0 or w == 0:
        raise ValueError(
            f"an image of {array.shape[0]}x{array.shape[1]} is smaller than scale {scale}"
        )
    return array[:h, :w]


def quantize(image) -> np.ndarray:
    """Rounded to the nearest integer and clipped to [0, 255], as uint8."""
    return np.clip(np.round(np.asarray(image, np.float64)), 0, 255).astype(np.uint8)


def imresize(image, scale: float | None = None, *, shape: tuple[int, int] | None = None):
    """MATLAB's ``imresize(image, scale, 'bicubic')`` (or to ``shape=(H, W)``).

    Antialiased when shrinking, symmetric boundary (`adderjax.resize`). uint8 in gives
    uint8 out (rounded and clipped, as MATLAB); any other input gives float64, unclipped.
    The output has the input's layout: ``(H, W)`` or ``(H, W, C)``.
    """
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {array.shape}")
    h, w = array.shape[:2]
    if (scale is None) == (shape is None):
        raise ValueError("give exactly one of scale and shape")
    if shape is None:
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        sizes, scales = (resize.output_size(h, scale), resize.output_size(w, scale)), (scale,) * 2
    else:
        sizes = tuple(int(s) for s in shape)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(f"shape must be two positive ints, got {shape}")
        scales = (sizes[0] / h, sizes[1] / w)
    out = resize.resize_axes(array, sizes, scales, axes=(0, 1))
    return quantize(out) if array.dtype == np.uint8 else out


def rgb_to_y(image) -> np.ndarray:
    """The BT.601 luma of an RGB image in [0, 255] (MATLAB ``rgb2ycbcr``'s Y, unrounded), as
    float64 ``(H, W)``; a grey image is returned as it is."""
    array = _image(image, "image").astype(np.float64)
    if array.shape[-1] == 1:
        return array[:, :, 0]
    return array @ Y_WEIGHTS + Y_OFFSET


def _prepare(reference, estimate, crop_border: int, y_channel: bool):
    ref, est = _image(reference, "reference"), _image(estimate, "estimate")
    if ref.shape != est.shape:
        raise ValueError(f"reference {ref.shape} and estimate {est.shape} differ in shape")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be an int >= 0, got {crop_border!r}")
    if y_channel:
        ref, est = rgb_to_y(ref)[:, :, None], rgb_to_y(est)[:, :, None]
    ref, est = ref.astype(np.float64), est.astype(np.float64)
    if crop_border:
        ref = ref[crop_border:-crop_border, crop_border:-crop_border]
        est = est[crop_border:-crop_border, crop_border:-crop_border]
    if ref.size == 0:
        raise ValueError(
            f"nothing is left of a {reference.shape} image after crop_border={crop_border}"
        )
    return ref, est


def psnr(reference, estimate, *, crop_border: int, y_channel: bool = True) -> float:
    """``10 log10(255^2 / MSE)`` over the pixels `crop_border` away from the edges, on the Y
    channel (or every channel with ``y_channel=False``); inf for identical images."""
    ref, est = _prepare(reference, estimate, crop_border, y_channel)
    mse = float(np.mean((ref - est) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(PIXEL_MAX**2 / mse)


def _gaussian_window() -> np.ndarray:
    r = np.arange(SSIM_WINDOW, dtype=np.float64) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(r**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The separable filter ``g (x) g`` over the positions where the window fits (MATLAB's
    ``filter2(w, x, 'valid')``)."""
    rows = np.lib.stride_tricks.sliding_window_view(x, len(g), axis=0) @ g
    return np.lib.stride_tricks.sliding_window_view(rows, len(g), axis=1) @ g


def _ssim_channel(a: np.ndarray, b: np.ndarray) -> float:
    g = _gaussian_window()
    c1, c2 = (SSIM_K1 * PIXEL_MAX) ** 2, (SSIM_K2 * PIXEL_MAX) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a**2
    var_b = _filter_valid(b * b, g) - mu_b**2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(reference, estimate, *, crop_border: int, y_channel: bool = True) -> float:
    """Wang et al.'s SSIM (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, L 255), the
    mean of the map over the windows that fit, after cropping `crop_border`; on the Y channel
    (or the mean over channels with ``y_channel=False``)."""
    ref, est = _prepare(reference, estimate, crop_border, y_channel)
    if min(ref.shape[:2]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after cropping, got "
            f"{ref.shape[0]}x{ref.shape[1]}"
        )
    return float(np.mean([_ssim_channel(ref[..., c], est[..., c]) for c in range(ref.shape[-1])]))
