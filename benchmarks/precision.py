"""The native kernels' float32 forward formulas against the float64 reference, on real activations.

    python benchmarks/precision.py --workdir runs/lenet-adder [--workdir runs/r20-adder ...]

For each trained network (any workdir of `python -m train.mnist` / `train.cifar`; images from
Fashion-MNIST, padded to 32x32 and tiled to RGB for a 32x32x3 model, as
`benchmarks/distill_table.py` writes them), every adder layer's input and filters are
recorded on `--images` test images, and the layer's forward is computed by the native
kernels in float32 with each l_1 formula ("min": ``x + w - 2 min(x, w)``, "abs": ``|x - w|``)
and by the XLA path in float32, against the reference in float64. The error is reported
against the output's scale (max |y|) and against what survives the BatchNorm that follows each
adder layer: the spread (standard deviation over the batch and positions) of each output
channel. ``(|x| + |w|) / |x - w|`` over the layer's terms is the min identity's amplification.
A last row per network compares the logits of the whole network with each formula.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from unittest import mock

if __name__ == "__main__":
    # As in benchmarks/ops.py: the repository first, this folder (with its kernels.py) last.
    sys.path.append(sys.path.pop(0))
    sys.path.insert(0, os.path.dirname(sys.path[-1]))

import jax
import jax.numpy as jnp
import numpy as np

from adderjax import native, ops, reference, xla
from kernels import adder_cpu
from train import saved_models
from train.data import sources


def test_images(config, count: int, shape) -> np.ndarray:
    """`count` Fashion-MNIST test images, normalised as the model's dataset, in its shape."""
    source, _ = sources.open_source("fashion_mnist", "test", data_format="idx", data_dir=None)
    images = np.asarray(source.images[:count], np.float32)  # (N, 28, 28, 1)
    h, w, c = shape
    if (h, w) != images.shape[1:3]:
        ph, pw = (h - images.shape[1]) // 2, (w - images.shape[2]) // 2
        images = np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    images = np.repeat(images, c, axis=-1)
    info = sources.DATASETS[config.dataset]
    return (images / 255.0 - np.asarray(info.mean)) / np.asarray(info.std)


def record_layers(model, variables, images):
    """[(x, w, geometry)] of every adder layer, in call order, for one eager forward pass."""
    calls = []
    original = ops._adder_conv  # noqa: SLF001 - the op's custom_vjp, wrapped to observe it

    def observe(x, w, p, geom, *rest):
        calls.append((np.asarray(x, np.float32), np.asarray(w, np.float32), geom))
        return original(x, w, p, geom, *rest)

    with mock.patch.object(ops, "_adder_conv", observe):
        model.apply(variables, jnp.asarray(images, jnp.float32), train=False)
    return calls


def layer_errors(x, w, geom):
    with jax.enable_x64(True):
        ref = np.asarray(
            reference.adder_conv_forward(
                jnp.asarray(x, jnp.float64), jnp.asarray(w, jnp.float64), geom.strides, geom.pads
            )
        )
    spread = ref.reshape(-1, ref.shape[-1]).std(axis=0)  # per output channel
    got = {
        formula: np.asarray(
            adder_cpu.forward(
                jnp.asarray(x),
                jnp.asarray(w),
                strides=geom.strides,
                pads=geom.pads,
                formula=formula,
            ),
            np.float64,
        )
        for formula in adder_cpu.FORMULAS
    }
    got["xla"] = np.asarray(
        xla.forward(jnp.asarray(x), jnp.asarray(w), jnp.float32(1.0), geom, 1.0), np.float64
    )
    scale = np.abs(ref).max()
    errors = {}
    for k, v in got.items():
        err = np.abs(v - ref)
        errors[k] = (err.max() / scale, (err.reshape(-1, ref.shape[-1]) / spread).max())
    xs = np.abs(x).mean()
    ws = np.abs(w).mean()
    return errors, xs, ws, np.abs(ref).mean() / geom.reduction_size


def network_errors(model, variables, images):
    """Max |logit - logit_ref| / max |logit_ref| and top-1 agreement, per formula."""
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        with mock.patch.object(ops, "default_implementation", lambda: "xla"):
            ref = np.asarray(model.apply(v64, jnp.asarray(images, jnp.float64), train=False))
    out = {}
    for formula in adder_cpu.FORMULAS:
        with mock.patch.object(native, "filter_formula", lambda dtype, f=formula: f):
            logits = np.asarray(
                model.apply(variables, jnp.asarray(images, jnp.float32), train=False)
            )
        out[formula] = (
            np.abs(logits - ref).max() / np.abs(ref).max(),
            float(np.mean(logits.argmax(-1) == ref.argmax(-1))),
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", action="append", required=True)
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    if not adder_cpu.available():
        sys.exit(f"the native kernels are not available: {adder_cpu.unavailable_reason()}")
    print(f"jax {jax.__version__}, native kernels {adder_cpu.isa()}, {args.images} test images")
    for workdir in args.workdir:
        model, variables, config = saved_models.load_model(workdir)
        shape = sources.DATASETS[config.dataset].image_shape
        images = test_images(config, args.images, shape)
        print()
        print(f"{config.model} ({workdir}):")
        print()
        print(
            "| layer | terms | mean abs x | mean abs w | mean abs(x-w) "
            "| min: err / max abs y | min: err / channel std | abs: err / max abs y "
            "| abs: err / channel std | xla: err / max abs y | xla: err / channel std |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for i, (x, w, geom) in enumerate(record_layers(model, variables, images)):
            errors, xs, ws, ds = layer_errors(x, w, geom)
            cells = " | ".join(f"{a:.1e} | {b:.1e}" for a, b in errors.values())
            print(
                f"| {i} {tuple(w.shape)} s{geom.strides[0]} | {geom.reduction_size} | "
                f"{xs:.2f} | {ws:.2f} | {ds:.2f} | {cells} |",
                flush=True,
            )
        print()
        for formula, (err, agree) in network_errors(model, variables, images).items():
            print(
                f"whole network, {formula!r}: max logit error / max abs logit {err:.1e}, "
                f"top-1 agreement with float64 {100 * agree:.1f}%"
            )


if __name__ == "__main__":
    main()
