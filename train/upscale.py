r"""Super-resolves an image with a trained SR run: ``python -m train.upscale --workdir=W IN OUT``.

    python -m train.upscale --workdir=/tmp/edsr_x2 photo.png photo_x2.png

The image is cut into tiles of ``--tile`` LR pixels that overlap by ``--margin`` pixels on
each side, so memory stays bounded however large the image. Each tile's margin is dropped
from its output: with a margin at least the network's receptive radius (EDSR baseline: 35
LR pixels, VDSR: 20 HR pixels) the result equals super-resolving the image whole, except
for float rounding. Every full tile has one shape (one compilation); edge tiles are shifted
inside the image rather than padded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from absl import app, flags

from train import cli, sr_metrics, super_resolution
from train.data import sources, sr_images

__all__ = ["tile_plan", "upscale"]


def tile_plan(length: int, tile: int, margin: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) per tile along one axis of `length` pixels: the tile is
    ``[start, start + min(tile, length))`` and gives the output of pixels ``[keep_from,
    keep_to)``, which tile the axis exactly and lie `margin` pixels inside the tile except at
    the image's own edges."""
    if tile >= length:
        return [(0, 0, length)]
    if tile - 2 * margin < 1:
        raise ValueError(f"tile={tile} leaves no core inside a margin of {margin} on each side")
    plan, position = [], 0
    while position < length:
        start = max(0, min(position - margin, length - tile))
        end = length if start + tile >= length else start + tile - margin
        plan.append((start, position, end))
        position = end
    return plan


def upscale(predict: Callable, variables, image: np.ndarray, scale: int, *, tile: int, margin: int):
    """`image` (uint8 (h, w, 3)) super-resolved tile by tile, as uint8 (s h, s w, 3)."""
    h, w = image.shape[:2]
    th, tw = min(tile, h), min(tile, w)
    out = np.zeros((h * scale, w * scale, 3), np.float32)
    for y, y_from, y_to in tile_plan(h, tile, margin):
        for x, x_from, x_to in tile_plan(w, tile, margin):
            sr = np.asarray(predict(variables, image[None, y : y + th, x : x + tw]))[0]
            s = scale
            out[y_from * s : y_to * s, x_from * s : x_to * s] = sr[
                (y_from - y) * s : (y_to - y) * s, (x_from - x) * s : (x_to - x) * s
            ]
    return sr_metrics.quantize(out)


def run_from_flags(args: list[str]) -> str:
    """Upscales IN.png to OUT.png with the flags' model; the program's last line."""
    source, target = args
    f = flags.FLAGS
    model, variables, config, step = super_resolution.load(f.workdir, step=f.step)
    image = sr_images.read_image(source)
    predict = super_resolution.jit_predict(model)
    result = upscale(predict, variables, image, config.scale, tile=f.tile, margin=f.margin)
    try:
        sr_images.save_image(result, target)
    except OSError as e:
        raise sources.DataError(f"cannot write {target}: {e}") from None
    (h0, w0), (h1, w1) = image.shape[:2], result.shape[:2]
    return (
        f"{source} ({w0}x{h0}) -> {target} ({w1}x{h1}): "
        f"{config.model} x{config.scale} ({'AdderSR' if config.layer == 'adder' else 'CNN'}), "
        f"step {step}"
    )


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The workdir of a python -m train.sr run.")
    flags.DEFINE_integer("step", None, "The checkpoint to use (default: the newest).")
    flags.DEFINE_integer("tile", 256, "Tile size in LR pixels.")
    flags.DEFINE_integer("margin", 40, "Overlap per side in LR pixels (>= receptive radius).")
    flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
    define_flags()
    app.run(
        cli.program(
            run_from_flags,
            args=2,
            usage="usage: python -m train.upscale --workdir=W IN.png OUT.png",
        )
    )
