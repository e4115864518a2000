"""Times `adder_conv` against `lax.conv_general_dilated` on ResNet-20 and ResNet-50 layer shapes.

    python benchmarks/ops.py                  # every shape, forward and forward+backward
    python benchmarks/ops.py --only resnet20 --repeats 15
    python benchmarks/ops.py --no-xla         # skip the XLA path's column (slow on ResNet-50)

For each shape: median milliseconds over `--repeats` rounds after warm-up, every round timing
each computation once in turn (so that a noisy machine slows all of them alike), for the
forward and for forward+backward (the VJP for both inputs): the convolution, the adder op's
default implementation (on CPU the native kernels of `kernels/cpu/`), and the XLA path
(`implementation="xla"`, what the CPU ran before them); the ratios to the convolution; and the
peak memory of each compiled f+b as XLA's buffer assignment reports it (arguments + outputs +
temporaries). With the native kernels, a second table puts their forward and input gradient
beside their instruction bound: the shape's terms at the rate that its register tile reaches
on data in L1 on all threads (`kernels.adder_cpu.loop_rate`, the best of three runs, measured
here, now), and the layer's memory floor (a fused XLA loop that reads x and writes y, timed in
the same rounds: the bound of layers whose output is large beside their work, ResNet-50's
56x56 1x1 layers), with the page faults per call of the forward and of the floor;
then the convolution's GFLOP/s beside a float32 GEMM's, and the filter gradient's
correlation (``x^T g``, `kernels.adder_cpu.filter_corr`, FMAs like a GEMM's) in GFLOP/s
beside both. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
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
from kernels import adder_cpu

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
    # For tests/test_benchmarks.py: one small shape, not part of a full run.
    "tiny": [("tiny 8x8 8->8 3x3", 2, 8, 8, 8, 3, 1)],
}


def conv(x, w, strides, padding):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def adder(x, w, strides, padding):
    return adderjax.adder_conv(x, w, strides, padding)


def adder_xla(x, w, strides, padding):
    return adderjax.adder_conv(x, w, strides, padding, implementation="xla")


def native_input_grad(x, w, g, strides, padding):
    return adder_cpu.input_grad(x, w, g, strides=strides, pads=padding)


def memory_floor(x, w, strides, padding):
    """Reads x (the pixels a strided layer uses) and writes an output of the layer's shape,
    elementwise in one fused XLA loop: what any forward must at least move, into memory that
    XLA's allocator hands over as it does the forward's output (fresh or reused: the table
    prints the page faults of both)."""
    del padding
    xs = x[:, :: strides[0], :: strides[1]]
    cin, cout = x.shape[3], w.shape[3]
    y = jnp.tile(xs, (1, 1, 1, -(-cout // cin)))[..., :cout]
    return 2 * y


def native_filter_corr(x, w, g, strides, padding):
    return adder_cpu.filter_corr(x, g, kernel_hw=w.shape[:2], strides=strides, pads=padding)


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


def compile_fn(fn, args):
    """(compiled, its dynamic arguments): the last two of args (strides, padding) are static."""
    compiled = jax.jit(fn, static_argnums=(len(args) - 2, len(args) - 1)).lower(*args).compile()
    return compiled, args[:-2]


def minor_faults() -> int:
    """Page faults of this process so far that found no page (fresh memory being touched)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_round_robin(calls: dict, warmup: int, repeats: int) -> dict[str, float]:
    """Median ms of each compiled call; every round times each call once, in turn. Also the
    median page faults per call, as "<name> faults": a call whose output lands in fresh memory
    pays the OS to map and zero it, on the same cores that compute."""
    for compiled, dynamic in calls.values():
        for _ in range(warmup):
            jax.block_until_ready(compiled(*dynamic))
    times = {name: [] for name in calls}
    faults = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (compiled, dynamic) in calls.items():
            f0 = minor_faults()
            t0 = time.perf_counter()
            out = compiled(*dynamic)
            jax.block_until_ready(out)
            times[name].append(time.perf_counter() - t0)
            faults[name].append(minor_faults() - f0)
            del out
    row = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    row.update({f"{name} faults": statistics.median(f) for name, f in faults.items()})
    return row


def gemm_gflops(n: int = 4096, repeats: int = 3) -> float:
    """float32 GFLOP/s of an n^3 matmul: the machine's dense-GEMM speed."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    best = min(_timed(f, a, a) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(f, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    return time.perf_counter() - t0


def bench_shape(shape, warmup, repeats, with_xla: bool, native: bool):
    name, n, hw, cin, cout, k, s = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, hw, hw, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    ho = (hw + 2 * (k // 2) - k) // s + 1
    g = jnp.asarray(rng.normal(size=(n, ho, ho, cout)), jnp.float32)
    fns = {"conv": conv, "adder": adder}
    if with_xla:
        fns["xla"] = adder_xla
    calls, mem = {}, {}
    for label, fn in fns.items():
        calls[f"{label}_fwd"] = compile_fn(fn, (x, w, (s, s), pad))
        calls[f"{label}_fb"] = compile_fn(forward_backward(fn), (x, w, g, (s, s), pad))
        mem[label] = peak_bytes(calls[f"{label}_fb"][0])
    if native:
        calls["native_dx"] = compile_fn(native_input_grad, (x, w, g, (s, s), pad))
        calls["native_dw"] = compile_fn(native_filter_corr, (x, w, g, (s, s), pad))
        calls["floor"] = compile_fn(memory_floor, (x, w, (s, s), pad))
    row = time_round_robin(calls, warmup, repeats)
    row.update(name=name, mem=mem, terms=n * ho * ho * cout * k * k * cin)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SHAPES), default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-xla", action="store_true", help="skip the XLA path's columns")
    args = parser.parse_args()
    groups = [args.only] if args.only else [g for g in SHAPES if g != "tiny"]
    default = adderjax.default_implementation()
    native = default == "native"
    threads = len(os.sched_getaffinity(0))
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{jax.devices()[0].device_kind}, {platform.machine()}, {threads} CPUs, float32, "
        f"adder = implementation {default!r}"
        + (f" ({adder_cpu.isa()})" if native else "")
        + f", median of {args.repeats} round-robin rounds after {args.warmup} warm-up"
    )
    if native:
        width = lambda grad, c: 256 if adder_cpu.narrow_tiles(adder_cpu.isa(), grad, c) else 512
        print(
            "register tiles at 16 / 32 channels: forward "
            f"{width(False, 16)} / {width(False, 32)}-bit, input gradient "
            f"{width(True, 16)} / {width(True, 32)}-bit"
            + (" (AVX2: 256)" if adder_cpu.isa() == "avx2" else "")
        )
    print()
    xla_head = " xla fwd ms | xla f+b ms |" if not args.no_xla else ""
    xla_rule = "---:|---:|" if not args.no_xla else ""
    print(
        "| shape (batch) | conv fwd ms | adder fwd ms | ratio | conv f+b ms | adder f+b ms "
        f"| ratio |{xla_head} conv f+b MiB | adder f+b MiB | mem ratio |"
    )
    print(f"|---|---:|---:|---:|---:|---:|---:|{xla_rule}---:|---:|---:|")
    rows, fwd_ratios, fb_ratios = [], [], []
    mib = 1 / 2**20
    for group in groups:
        for shape in SHAPES[group]:
            r = bench_shape(shape, args.warmup, args.repeats, not args.no_xla, native)
            rows.append(r)
            fr, br = r["adder_fwd"] / r["conv_fwd"], r["adder_fb"] / r["conv_fb"]
            fwd_ratios.append(fr)
            fb_ratios.append(br)
            xla = f" {r['xla_fwd']:.1f} | {r['xla_fb']:.1f} |" if not args.no_xla else ""
            print(
                f"| {r['name']} ({shape[1]}) | {r['conv_fwd']:.2f} | {r['adder_fwd']:.2f} | "
                f"{fr:.2f} | {r['conv_fb']:.2f} | {r['adder_fb']:.2f} | {br:.2f} |{xla} "
                f"{r['mem']['conv'] * mib:.0f} | {r['mem']['adder'] * mib:.0f} | "
                f"{r['mem']['adder'] / r['mem']['conv']:.2f} |",
                flush=True,
            )
    gmean = lambda v: float(np.exp(np.mean(np.log(v))))
    print()
    print(
        f"geometric mean ratio: forward {gmean(fwd_ratios):.2f}x, "
        f"forward+backward {gmean(fb_ratios):.2f}x"
    )
    if native:
        print_bounds(rows, [sh for g in groups for sh in SHAPES[g]], threads)


def print_bounds(rows, shapes, threads):
    """The native kernels against their instruction bound, and the convolution against GEMM."""
    gemm = gemm_gflops()
    isa = adder_cpu.isa()
    print()
    print(
        f"instruction bound: terms / (rate of the shape's register tile on {threads} threads, "
        f"data in L1, best of three, measured now); float32 GEMM 4096^3: {gemm:.0f} GFLOP/s"
    )
    print()
    print(
        "memory floor: a fused XLA loop that reads x and writes an output of the layer's shape "
        "(into the memory XLA's allocator hands over, as the forward does); fwd / bound uses "
        "the larger of the two; faults: median page faults per call of the forward and of the "
        "floor (fresh pages the OS maps and zeroes on the computing cores; the forward asks "
        "for 2 MiB pages, so one of its faults can be 512 of the floor's)"
    )
    print()
    print(
        "| shape | fwd ms | fwd bound ms | memory floor ms | fwd / bound | fwd faults "
        "| floor faults | dx ms | dx bound ms "
        "| dx / bound | fwd Gterm/s | conv GFLOP/s | conv / GEMM | dw corr ms | dw GFLOP/s "
        "| dw / GEMM |"
    )
    print("|---|" + "---:|" * 15)
    rates = {}
    for r, shape in zip(rows, shapes, strict=True):
        _, _, _, cin, cout, _, _ = shape
        for grad, channels in ((False, cout), (True, cin)):
            if (grad, channels) not in rates:
                rates[grad, channels] = max(
                    adder_cpu.loop_rate(isa, grad, channels, threads, 0.1) for _ in range(3)
                )
        fwd_bound = 1e3 * r["terms"] / rates[False, cout]
        dx_bound = 1e3 * r["terms"] / rates[True, cin]
        conv_gflops = 2 * r["terms"] / (r["conv_fwd"] * 1e-3) / 1e9
        dw_gflops = 2 * r["terms"] / (r["native_dw"] * 1e-3) / 1e9
        print(
            f"| {r['name']} | {r['adder_fwd']:.2f} | {fwd_bound:.2f} | {r['floor']:.2f} | "
            f"{r['adder_fwd'] / max(fwd_bound, r['floor']):.2f} | {r['adder_fwd faults']:.0f} | "
            f"{r['floor faults']:.0f} | {r['native_dx']:.2f} | "
            f"{dx_bound:.2f} | "
            f"{r['native_dx'] / dx_bound:.2f} | {r['terms'] / r['adder_fwd'] / 1e6:.1f} | "
            f"{conv_gflops:.0f} | {conv_gflops / gemm:.2f} | {r['native_dw']:.2f} | "
            f"{dw_gflops:.0f} | {dw_gflops / gemm:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
