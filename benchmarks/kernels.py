"""Times the Pallas kernels against the XLA path and `lax.conv_general_dilated` on a GPU.

    python benchmarks/kernels.py                 # needs a GPU: every shape of benchmarks/ops.py
    python benchmarks/kernels.py --only resnet20 --repeats 20
    python benchmarks/kernels.py --roofline      # any machine: the H100 roofline on paper

For each shape of `benchmarks/ops.py`: median milliseconds of the forward and of
forward+backward for the convolution, `adder_conv(implementation="xla")` and
`adder_conv(implementation="pallas")`, the ratios pallas/conv and pallas/xla, and the
roofline time of the Pallas path for an H100 SXM beside it. On a machine without a GPU it
says so and exits with status 1 (the roofline still prints with --roofline).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import sys

import jax
import numpy as np
import ops as op_bench  # benchmarks/ops.py, this script's sibling: shapes and timing

import adderjax

# H100 SXM5 (NVIDIA datasheet): 132 SMs x 128 FP32 lanes at 1.98 GHz boost, HBM3 3.35 TB/s.
H100_FP32_INSTR_PER_S = 132 * 128 * 1.98e9
H100_HBM_BYTES_PER_S = 3.35e12
# FP32 instructions per term: forward |x - w| + acc is FADD then FADD with an |.| operand
# modifier; the input gradient g * clip(w - x) + acc is FADD, FMNMX, FMNMX, FFMA; the
# filter gradient's x^T g is one FFMA (IEEE fp32 dot, no tensor cores).
INSTR_PER_TERM = {"forward": 2, "input_grad": 4, "filter_grad": 1}


@dataclasses.dataclass(frozen=True)
class Roofline:
    terms: float  # adder (or multiply-add) terms, grid waste of the phase-flat layout included
    instr_s: float  # time at the FP32 instruction peak
    bytes: float  # HBM bytes, layout copies included
    bytes_s: float  # time at the HBM peak

    @property
    def seconds(self) -> float:
        return max(self.instr_s, self.bytes_s)

    @property
    def bound(self) -> str:
        return "compute" if self.instr_s >= self.bytes_s else "memory"


def roofline(shape, kernel: str) -> Roofline:
    """Paper roofline of one Pallas kernel for a `benchmarks/ops.py` shape, float32."""
    _, n, hw, cin, cout, k, s = shape
    pad = k // 2
    hq = math.ceil((hw + 2 * pad) / s)
    ho = (hw + 2 * pad - k) // s + 1
    grid = n * hq * hq  # output (or input-phase) rows the kernels compute, real or not
    terms = grid * cout * k * k * cin
    x, y, w = n * hw * hw * cin, n * ho * ho * cout, k * k * cin * cout
    xph, ygrid = s * s * grid * cin, grid * cout
    # Each kernel reads its layout-copied operands once and writes its output; the layout
    # copy itself reads and writes once more.
    words = {
        "forward": (x + xph) + xph + w + ygrid + (ygrid + y),
        "input_grad": (x + xph) + (y + ygrid) + xph + ygrid + w + (xph + x),
        "filter_grad": (x + xph) + (y + ygrid) + xph + ygrid + w,
    }[kernel]
    instr_s = terms * INSTR_PER_TERM[kernel] / H100_FP32_INSTR_PER_S
    return Roofline(terms, instr_s, 4 * words, 4 * words / H100_HBM_BYTES_PER_S)


def print_roofline(groups):
    print("H100 SXM roofline on paper, float32 (benchmarks/kernels.py --roofline)")
    print()
    print("| shape (batch) | G terms | fwd us | bound | dx us | bound | dw us | bound | f+b us |")
    print("|---|---:|---:|---|---:|---|---:|---|---:|")
    for group in groups:
        for shape in op_bench.SHAPES[group]:
            r = {kern: roofline(shape, kern) for kern in INSTR_PER_TERM}
            total = sum(v.seconds for v in r.values())
            print(
                f"| {shape[0]} ({shape[1]}) | {r['forward'].terms / 1e9:.2f} | "
                + " | ".join(f"{r[k].seconds * 1e6:.0f} | {r[k].bound}" for k in INSTR_PER_TERM)
                + f" | {total * 1e6:.0f} |"
            )


def bench_shape(shape, warmup, repeats):
    name, n, hw, cin, cout, k, s = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, hw, hw, cin)).astype(np.float32)
    w = rng.normal(size=(k, k, cin, cout)).astype(np.float32)
    pad = ((k // 2, k // 2), (k // 2, k // 2))
    ho = (hw + 2 * (k // 2) - k) // s + 1
    g = rng.normal(size=(n, ho, ho, cout)).astype(np.float32)

    def adder(implementation):
        return lambda x, w, strides, padding: adderjax.adder_conv(
            x, w, strides, padding, implementation=implementation
        )

    row = {"name": name}
    fns = (("conv", op_bench.conv), ("xla", adder("xla")), ("pallas", adder("pallas")))
    for label, fn in fns:
        row[f"{label}_fwd"], _ = op_bench.time_it(fn, (x, w, (s, s), pad), warmup, repeats)
        row[f"{label}_fb"], _ = op_bench.time_it(
            op_bench.forward_backward(fn), (x, w, g, (s, s), pad), warmup, repeats
        )
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(op_bench.SHAPES), default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--roofline", action="store_true", help="print the H100 roofline only")
    args = parser.parse_args()
    groups = [args.only] if args.only else list(op_bench.SHAPES)
    if args.roofline:
        print_roofline(groups)
        return
    if "pallas" not in adderjax.available_implementations():
        sys.exit(
            f"benchmarks/kernels.py times the Pallas GPU kernels and needs a GPU; this machine's "
            f"backend is {jax.default_backend()!r} (--roofline prints the H100 roofline anywhere)"
        )
    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.machine()}, "
        f"float32, median of {args.repeats} after {args.warmup} warm-up"
    )
    print()
    print(
        "| shape (batch) | conv fwd ms | xla fwd ms | pallas fwd ms | pallas/conv | pallas/xla "
        "| roofline fwd ms | conv f+b ms | xla f+b ms | pallas f+b ms | pallas/conv "
        "| pallas/xla | roofline f+b ms |"
    )
    print("|---|" + "---:|" * 12)
    for group in groups:
        for shape in op_bench.SHAPES[group]:
            r = bench_shape(shape, args.warmup, args.repeats)
            roof = {kern: roofline(shape, kern).seconds * 1e3 for kern in INSTR_PER_TERM}
            print(
                f"| {r['name']} ({shape[1]}) | {r['conv_fwd']:.3f} | {r['xla_fwd']:.3f} | "
                f"{r['pallas_fwd']:.3f} | {r['pallas_fwd'] / r['conv_fwd']:.2f} | "
                f"{r['pallas_fwd'] / r['xla_fwd']:.2f} | {roof['forward']:.3f} | "
                f"{r['conv_fb']:.3f} | {r['xla_fb']:.3f} | {r['pallas_fb']:.3f} | "
                f"{r['pallas_fb'] / r['conv_fb']:.2f} | {r['pallas_fb'] / r['xla_fb']:.2f} | "
                f"{sum(roof.values()):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
