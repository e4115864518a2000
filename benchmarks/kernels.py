"""Times the Pallas kernels against the XLA path and `lax.conv_general_dilated` on a GPU, and
counts their sm_90 machine code on any machine.

    python benchmarks/kernels.py                 # needs a GPU: every shape of benchmarks/ops.py
    python benchmarks/kernels.py --only resnet20 --repeats 20
    python benchmarks/kernels.py --roofline      # any machine: the H100 roofline on paper
    python benchmarks/kernels.py --sass          # any x86-64 Linux: the static SASS report
    python benchmarks/kernels.py --tune          # any x86-64 Linux: rewrite kernels/tile_costs.py

--sass compiles every kernel of every layer of `benchmarks/adder_layers.py` (ResNet-20, VGG-small,
ResNet-50; --batch, default 32) with the default tiles for sm_90, offline (the test extra's
triton + ptxas), and prints per kernel and layer: the tile, registers, spills, shared memory,
blocks per SM, hot-loop instructions and their mix, terms per thread per iteration,
instructions per term against the ideal, whole-kernel instructions per useful term, and the
estimated H100 time (`benchmarks/sass_model.py` holds the model), with the layer's layout copies at
HBM speed and the paper roofline beside it. --tune compiles the candidate tiles of each kernel
on one layer and writes the table that `BlockSizes.get_default` ranks.

For each shape of `benchmarks/ops.py`: median milliseconds of the forward and of
forward+backward for the convolution, `adder_conv(implementation="xla")` and
`adder_conv(implementation="pallas")`, the ratios pallas/conv and pallas/xla, and the
roofline time of the Pallas path for an H100 SXM beside it. On a machine without a GPU it
says so and exits with status 1 (the roofline still prints with --roofline).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import platform
import sys
import tempfile

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0] and its kernels.py would shadow the kernels
    # package that adderjax imports: the repository goes first, this folder last.
    sys.path.append(sys.path.pop(0))
    sys.path.insert(0, os.path.dirname(sys.path[-1]))

import adder_layers  # benchmarks/adder_layers.py: the ResNet-20, VGG-small, ResNet-50 layers
import jax
import numpy as np
import ops as op_bench  # benchmarks/ops.py, this script's sibling: shapes and timing
import sass_model  # benchmarks/sass_model.py: the static SASS model
import tpu_bundles  # benchmarks/tpu_bundles.py: the TPU bundle report

import adderjax
import kernels
from kernels import block_sizes, tile_costs
from kernels import layout as layout_lib

# H100 SXM5: 132 SMs x 128 FP32 lanes at 1.98 GHz boost, HBM3 3.35 TB/s (sass_model's numbers).
H100_FP32_INSTR_PER_S = block_sizes.SMS * sass_model.LANES_PER_SM * sass_model.CLOCK_HZ
H100_HBM_BYTES_PER_S = sass_model.HBM_BYTES_PER_S
# FP32 instructions per term: forward |x - w| + acc is FADD then FADD with an |.| operand
# modifier; the input gradient g * clip(w - x) + acc is FADD, FMNMX, FMNMX, FFMA; the
# filter gradient's x^T g is one FFMA (IEEE fp32 dot, no tensor cores).
INSTR_PER_TERM = sass_model.IDEAL


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
    pad = (k // 2, k // 2)
    return layer_roofline(((hw, hw, cin), (k, k), cout, s, (pad, pad)), n, kernel)


def _words(layer, batch: int):
    """(grid rows, words of x, y, w, the phase-split input and the output grid)."""
    (h, wd, cin), (kh, kw), cout, s, pads = layer
    lay = layout_lib.make_layout((batch, h, wd, cin), (kh, kw), (s, s), pads)
    (ho, wo), grid = lay.out_hw, lay.rows  # grid: output (or input-phase) rows computed
    x, y, w = batch * h * wd * cin, batch * ho * wo * cout, kh * kw * cin * cout
    return grid, x, y, w, s * s * grid * cin, grid * cout


def layout_copy_bytes(layer, batch: int, kernel: str) -> float:
    """HBM bytes of the XLA layout copies around one kernel (read and write once), float32."""
    _, x, y, _, xph, ygrid = _words(layer, batch)
    words = {
        "forward": (x + xph) + (ygrid + y),
        "input_grad": (x + xph) + (y + ygrid) + (xph + x),
        "filter_grad": (x + xph) + (y + ygrid),
    }[kernel]
    return 4 * words


def layer_roofline(layer, batch: int, kernel: str) -> Roofline:
    """Paper roofline of one Pallas kernel on a `benchmarks/adder_layers.py` layer, float32."""
    grid, x, y, w, xph, ygrid = _words(layer, batch)
    (_, _, cin), (kh, kw), cout, _, _ = layer
    terms = grid * cout * kh * kw * cin
    # Each kernel reads its layout-copied operands once and writes its output; the layout
    # copy itself reads and writes once more.
    kernel_words = {
        "forward": xph + w + ygrid,
        "input_grad": xph + ygrid + w,
        "filter_grad": xph + ygrid + w,
    }[kernel]
    bytes_ = 4 * kernel_words + layout_copy_bytes(layer, batch, kernel)
    instr_s = terms * INSTR_PER_TERM[kernel] / H100_FP32_INSTR_PER_S
    return Roofline(terms, instr_s, bytes_, bytes_ / H100_HBM_BYTES_PER_S)


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


# ----------------------------------------------------------------------------- static SASS


def sass_reports(groups, batch: int, workdir) -> list[tuple[str, str, list]]:
    """[(net, layer, [KernelReport])] for every layer of the groups, default tiles."""
    entries = []
    for net in groups:
        for name, layer in adder_layers.LAYERS[net].items():
            tiles = sass_model.default_tiles(layer, batch)
            for kind, call, useful in sass_model.kernel_calls(layer, batch, tiles):
                entries.append((net, name, layer, kind, call, useful, tiles[kind]))
    compiled = sass_model.compile_calls([e[4] for e in entries], workdir)
    by_layer = {}
    for (net, name, layer, _, call, useful, bs), result in zip(entries, compiled, strict=True):
        report = sass_model.analyze(
            f"{net} {name} {call.name}",
            call,
            result,
            (bs.block_m, bs.block_c, bs.block_o),
            useful,
        )
        by_layer.setdefault((net, name), (layer, []))[1].append(report)
    return [(net, name, layer, reports) for (net, name), (layer, reports) in by_layer.items()]


def _describe(layer) -> str:
    (h, w, cin), (kh, kw), cout, s, _ = layer
    return f"{h}x{w} {cin}->{cout} {kh}x{kw}" + (f" s{s}" if s > 1 else "")


def print_sass(groups, batch: int, workdir):
    rows = sass_reports(groups, batch, workdir)
    print(
        f"Static SASS model, sm_90 cubins from triton {_triton_version()} + ptxas, float32, "
        f"p = 1, HardTanh, batch {batch} (python benchmarks/kernels.py --sass)"
    )
    print()
    print(
        "| layer | kernel | tile m,c,o/warps | regs | spill | smem KiB | blocks/SM | loop instr "
        "| loop mix | terms/thread/iter | instr/term (ideal) | whole kernel instr/term "
        "| est. H100 us | + layout copies us | roofline us |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for net, name, layer, reports in rows:
        for kind in sass_model.KINDS:
            mine = [r for r in reports if r.kind == kind]
            first = mine[0]
            loop = sum(r.loop_instructions for r in mine) / len(mine)
            per_term = sum(r.per_term for r in mine) / len(mine)
            whole = sum(r.thread_instructions for r in mine) / sum(r.useful_terms for r in mine)
            est = sum(r.seconds() for r in mine)
            copies = layout_copy_bytes(layer, batch, kind) / H100_HBM_BYTES_PER_S
            mix = ", ".join(f"{k} {v}" for k, v in list(first.loop_histogram.items())[:4])
            phases = f" ({len(mine)} phases)" if len(mine) > 1 else ""
            m, c, o = first.block
            print(
                f"| {net} {name} {_describe(layer)} | {kind}{phases} | {m},{c},{o}/"
                f"{first.num_warps} | {max(r.registers for r in mine)} | "
                f"{max(r.spill_bytes for r in mine)} | {first.shared_bytes / 1024:.1f} | "
                f"{min(r.blocks_per_sm() for r in mine)} | {loop:.0f} | {mix} | "
                f"{first.terms_per_iteration:.0f} | {per_term:.2f} ({sass_model.IDEAL[kind]}) | "
                f"{whole:.2f} | {est * 1e6:.1f} | {(est + copies) * 1e6:.1f} | "
                f"{layer_roofline(layer, batch, kind).seconds * 1e6:.1f} |",
                flush=True,
            )


def _triton_version() -> str:
    import importlib.metadata  # only here: the triton wheel is the test extra's

    return importlib.metadata.version("triton")


def write_tile_costs(table: dict, path, batch: int):
    doc = tile_costs.__doc__.strip()
    lines = ['"""' + doc + '\n"""', "", "from typing import NamedTuple", "", ""]
    lines += ["class TileCost(NamedTuple):"]
    lines += [f"    {f}: int" for f in tile_costs.TileCost._fields]
    name = " ".join(sass_model.TUNE_LAYER)
    layer = _describe(adder_layers.LAYERS[sass_model.TUNE_LAYER[0]][sass_model.TUNE_LAYER[1]])
    lines += [
        "",
        "",
        f'MEASURED_ON = "{name} ({layer}), batch {batch}, triton {_triton_version()}"',
    ]
    lines += ["TILES: dict[str, tuple[TileCost, ...]] = {"]
    for kind, entries in table.items():
        lines.append(f'    "{kind}": (')
        for e in entries:
            lines.append(
                f"        TileCost({', '.join(str(e[f]) for f in tile_costs.TileCost._fields)}),"
            )
        lines.append("    ),")
    lines.append("}")
    pathlib.Path(path).write_text("\n".join(lines) + "\n")


def bench_shape(shape, warmup, repeats, precision=None):
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

    def conv(x, w, strides, padding):
        return jax.lax.conv_general_dilated(
            x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
        )  # fmt: skip

    row = {"name": name}
    fns = (("conv", conv), ("xla", adder("xla")), ("pallas", adder("pallas")))
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
    parser.add_argument("--sass", action="store_true", help="print the static SASS report")
    parser.add_argument("--tune", action="store_true", help="rewrite kernels/tile_costs.py")
    parser.add_argument(
        "--tune-kernels", default=",".join(sass_model.KINDS),
        help="--tune these kernels only (comma-separated); the others keep their rows",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=32, help="batch of --sass and --tune")
    parser.add_argument(
        "--precision", choices=("default", "highest"), default="highest",
        help="the convolution's precision (TF32 tensor cores with default on a GPU)",
    )  # fmt: skip
    parser.add_argument("--workdir", default=None, help="keep --sass/--tune's cubins and SASS")
    parser.add_argument("--tpu", action="store_true", help="the TPU bundle report (libtpu)")
    parser.add_argument("--generation", default="v5e", help="with --tpu: v4, v5e, v5p or v6e")
    parser.add_argument("--out", default=None, help="with --tpu: also write the table here")
    args = parser.parse_args()
    groups = [args.only] if args.only else list(op_bench.SHAPES)
    if args.tpu:
        nets = [args.only] if args.only else ["resnet20", "resnet50"]
        tpu_bundles.main(args.generation, nets, args.batch, args.out, args.workdir)
        return
    if args.roofline:
        print_roofline(groups)
        return
    if args.sass or args.tune:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = pathlib.Path(args.workdir or tmp)
            if args.tune:
                kinds = tuple(args.tune_kernels.split(","))
                unknown = set(kinds) - set(sass_model.KINDS)
                if unknown:
                    parser.error(f"--tune-kernels: unknown {sorted(unknown)}")
                table = {k: [e._asdict() for e in v] for k, v in tile_costs.TILES.items()}
                table.update(sass_model.tune(workdir / "tune", args.batch, kinds))
                path = pathlib.Path(kernels.__file__).with_name("tile_costs.py")
                write_tile_costs(table, path, args.batch)
                print(f"wrote {sum(map(len, table.values()))} tiles to {path}")
            if args.sass:
                nets = [args.only] if args.only else list(adder_layers.LAYERS)
                print_sass(nets, args.batch, workdir / "sass")
        return
    if "pallas" not in adderjax.available_implementations():
        sys.exit(
            f"benchmarks/kernels.py times the Pallas GPU kernels and needs a GPU; this machine's "
            f"backend is {jax.default_backend()!r} (--roofline prints the H100 roofline anywhere)"
        )
    on_tpu = jax.default_backend() == "tpu"  # the Mosaic kernels; the roofline is the H100's
    print(
        f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {platform.machine()}, "
        f"float32, conv precision {args.precision}, median of {args.repeats} after "
        f"{args.warmup} warm-up"
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
            r = bench_shape(shape, args.warmup, args.repeats, args.precision.upper())
            roof = {kern: roofline(shape, kern).seconds * 1e3 for kern in INSTR_PER_TERM}
            if on_tpu:
                roof = {kern: float("nan") for kern in roof}
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
