"""Times `adder_conv` against `lax.conv_general_dilated` on ResNet-20 and ResNet-50 layer shapes.

    python benchmarks/ops.py                  # every shape, forward and forward+backward
    python benchmarks/ops.py --only resnet20 --repeats 5

For each shape: median milliseconds over `--repeats` timed calls after warm-up, for the
forward and for forward+backward (the VJP for both inputs), the adder/conv ratio, and the
peak memory of each compiled computation as XLA's buffer assignment reports it
(arguments + outputs + temporaries). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0] and its kernels.py would shadow the kernels
    # package that adderjax imports: the repository goes first, this folder last.
    sys.path.append(sys.path.pop(0))
    sys.path.insert(0, os.path.dirname(sys.path[-1]))

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import adderjax

# (name, batch, H=W, Cin, Cout, kernel, stride); explicit symmetric padding as the models use.
SHAPES = {
    "resnet20": [
        ("r20 32x32 16->16 3x3", 128, 32, 16, 16, 3, 1),
        ("r20 32x32 16->32 3x3 s2", 128, 32, 16, 32, 3, 2),
        ("r20 32x32 16->32 1x1 s2", 128, 32, 16, 32, 1, 2),
        ("r20 16x16 32->32 3x3", 128, 16, 32, 32, 3, 1),
        ("r20 16x16 32->64 3x3 s2", 128, 16, 32, 64, 3, 2),
        ("r20 16x16 32->64 1x1 s2", 128, 16, 32, 64, 1, 2),
        ("r20 8x8 64->64 3x3", 128, 8, 64, 64, 3, 1),
    ],
    "resnet50": [
        ("r50 56x56 64->64 1x1", 32, 56, 64, 64, 1, 1),
        ("r50 56x56 64->64 3x3", 32, 56, 64, 64, 3, 1),
        ("r50 56x56 64->256 1x1", 32, 56, 64, 256, 1, 1),
        ("r50 28x28 128->128 3x3", 32, 28, 128, 128, 3, 1),
        ("r50 14x14 256->256 3x3", 32, 14, 256, 256, 3, 1),
        ("r50 7x7 512->512 3x3", 32, 7, 512, 512, 3, 1),
        ("r50 14x14 1024->256 1x1", 32, 14, 1024, 256, 1, 1),
    ],
}


def conv(x, w, strides, padding):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def adder(x, w, strides, padding):
    return adderjax.adder_conv(x, w, strides, padding)


def forward_backward(fn):
    def run(x, w, g, strides, padding):
        y, vjp = jax.vjp(lambda a, b: fn(a, b, strides, padding), x, w)
        return y, *vjp(g)

    return run


def peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    if m is None:
        return -1
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def time_it(fn, args, warmup: int, repeats: int) -> tuple[float, int]:
    compiled = jax.jit(fn, static_argnums=(len(args) - 2, len(args) - 1)).lower(*args).compile()
    dynamic = args[:-2]
    for _ in range(warmup):
        jax.block_until_ready(compiled(*dynamic))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*dynamic))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), peak_bytes(compiled)


def bench_shape(shape, warmup, repeats):
    name, n, hw, cin, cout, k, s = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, hw, hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    ho = (hw + 2 * (k // 2) - k) // s + 1
    g = jnp.asarray(rng.normal(size=(n, ho, ho, cout)), jnp.float32)
    row = {"name": name}
    for label, fn in (("conv", conv), ("adder", adder)):
        row[f"{label}_fwd"], row[f"{label}_fwd_mem"] = time_it(
            fn, (x, w, (s, s), pad), warmup, repeats
        )
        row[f"{label}_fb"], row[f"{label}_fb_mem"] = time_it(
            forward_backward(fn), (x, w, g, (s, s), pad), warmup, repeats
        )
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SHAPES), default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    groups = [args.only] if args.only else list(SHAPES)
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}, {platform.machine()}, float32, "
        f"median of {args.repeats} after {args.warmup} warm-up"
    )
    print()
    print(
        "| shape (batch) | conv fwd ms | adder fwd ms | ratio | conv f+b ms | adder f+b ms "
        "| ratio | conv f+b MiB | adder f+b MiB | mem ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fwd_ratios, fb_ratios = [], []
    for group in groups:
        for shape in SHAPES[group]:
            r = bench_shape(shape, args.warmup, args.repeats)
            fr, br = r["adder_fwd"] / r["conv_fwd"], r["adder_fb"] / r["conv_fb"]
            fwd_ratios.append(fr)
            fb_ratios.append(br)
            mib = 1 / 2**20
            print(
                f"| {r['name']} ({shape[1]}) | {r['conv_fwd']:.1f} | {r['adder_fwd']:.1f} | "
                f"{fr:.2f} | {r['conv_fb']:.1f} | {r['adder_fb']:.1f} | {br:.2f} | "
                f"{r['conv_fb_mem'] * mib:.0f} | {r['adder_fb_mem'] * mib:.0f} | "
                f"{r['adder_fb_mem'] / r['conv_fb_mem']:.2f} |",
                flush=True,
            )
    gmean = lambda v: float(np.exp(np.mean(np.log(v))))
    print()
    print(
        f"geometric mean ratio: forward {gmean(fwd_ratios):.2f}x, "
        f"forward+backward {gmean(fb_ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
