"""The TPU kernels judged by their VLIW bundles, compiled ahead of time on this CPU machine.

    pip install -e ".[tpu-aot]"          # libtpu, 684 MB: not in the test extra
    python benchmarks/kernels.py --tpu --generation v5e [--only resnet20] [--out FILE]

For every adder layer of ResNet-20 and ResNet-50 (`adder_layers.LAYERS`, batch 32) it
compiles, for an abstract TPU of that generation (`jax.experimental.topologies`), the
forward and the HardTanh input gradient of `kernels.adder_tpu` and of the XLA path
(`adderjax.xla`), with libtpu dumping the final bundles (`--xla_jf_dump_to`). Of each
program it reads the hot loop, the innermost loop of the kernel (of XLA's, the fusion whose
innermost loop holds the most vsub.f32): its bundles, and the vector ops in them.

Per 1024 terms (one float32 vreg, 8 x 128): bundles of the hot loop, VALU ops, VALU ops a
bundle against the slots, vld and vst a bundle. A vreg of the kernel holds 1024 terms (the
pixels fill sublanes and lanes); a vreg of XLA's loop holds the (N, Ho, Wo, C) accumulator
tiled (8, 128) over its two most minor dimensions in the layout XLA chose (read from the
compiled HLO), so only part of it is terms: its count is divided by that fill.
Ideal: forward 3 VALU ops a vreg (vsub, vand for |.|, vadd), input gradient 4 (vsub,
vclamps, vmul, vadd: the VPU has no FMA and clamps in one op), over the generation's VALU
slots. Times: the kernel's hot loop over all its (padded) terms at the generation's clock,
beside the VALU ideal over the useful terms and the HBM time of the bytes its blocks move
(the patches' own XLA copy not included), both TensorCores counted on v4 and v5p.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import re
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IDEAL_VALU = {"forward": 3, "input_grad": 4}
# The op each vreg of terms makes exactly once in the hot loop.
TERM_OP = {"forward": "vsub.f32", "input_grad": "vsub.f32"}
VALU_OPS = {
    "vadd",
    "vsub",
    "vmul",
    "vand",
    "vor",
    "vxor",
    "vmax",
    "vmin",
    "vclamps",
    "vsel",
    "vstv",
    "vmov",
    "vcmp",
    "vshrl",
    "vshll",
}
_BUNDLE = re.compile(r"^\s*(?:0x[0-9a-f]+|\d+)\s+(?:[A-Z]{2}:\s*)*:?\s*(>*)\s*\{(.*)$")
_OP = re.compile(r"= ([a-z][a-z0-9_]*(?:\.[a-z0-9]+)?)")


@dataclasses.dataclass
class HotLoop:
    bundles: int
    ops: collections.Counter

    def valu(self) -> int:
        return sum(n for op, n in self.ops.items() if op.split(".")[0] in VALU_OPS)


def hot_loop(path: pathlib.Path, op: str | None = None) -> HotLoop:
    """The innermost loop of a final_bundles.txt (with `op`, the innermost that holds it):
    its bundles and their ops."""
    by_depth: dict[int, list[str]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        m = _BUNDLE.match(line)
        if m:
            by_depth[len(m.group(1))].append(m.group(2))
    loops = {
        depth: HotLoop(len(lines), collections.Counter(o for b in lines for o in _OP.findall(b)))
        for depth, lines in by_depth.items()
    }
    holding = [d for d, loop in loops.items() if op is None or loop.ops[op]]
    return loops[max(holding or loops)]


def _new_files(dump: pathlib.Path, seen: set) -> list[pathlib.Path]:
    new = [p for p in dump.iterdir() if p not in seen]
    seen.update(new)
    return new


def _final_bundles(files) -> list[pathlib.Path]:
    names = [p for p in files if p.name.endswith("final_bundles.txt")]
    return [p for p in names if "schedule-analysis" not in p.name]


_RESULT = re.compile(r"= f32\[([0-9,]*)\]\{([0-9,]*):T\((\d+),(\d+)\)")


def tile_fill(files, bundles: pathlib.Path) -> float:
    """The share of a vreg that holds elements, for the result of the fusion in `bundles`.

    Read from the compiled HLO (TLP-hlo.txt): the result's layout tiles its two most minor
    dimensions (8, 128), the most minor on lanes.
    """
    name = re.sub(r"^\d+-(.*)-\d+-final_bundles\.txt$", r"\1", bundles.name)
    for hlo in (p for p in files if p.name.endswith("TLP-hlo.txt")):
        for line in hlo.read_text().splitlines():
            if f"%{name} = " in line and (m := _RESULT.search(line)):
                dims = [int(d) for d in m.group(1).split(",")]
                order = [int(d) for d in m.group(2).split(",")]
                sub, lane = int(m.group(3)), int(m.group(4))
                fill = 1.0
                for dim, tile in ((order[0], lane), (order[1], sub)):
                    fill *= dims[dim] / (-(-dims[dim] // tile) * tile)
                return fill
    raise ValueError(f"no layout for {name} in the compiled HLO")


@dataclasses.dataclass
class Report:
    layer: str
    kernel: str
    terms: int  # useful terms
    padded_vregs: float  # vregs of terms the kernel computes (padding included)
    kernel_loop: HotLoop
    xla_loop: HotLoop
    xla_fill: float
    vmem_bytes: int
    hbm_bytes: int


def _layer_shapes(layer, batch):
    (h, w, cin), (kh, kw), cout, s, pads = layer
    (top, bottom), (left, right) = pads
    ho, wo = (h + top + bottom - kh) // s + 1, (w + left + right - kw) // s + 1
    return (h, w, cin), (kh, kw), cout, s, pads, (ho, wo)


def run(generation: str, nets, batch: int, dump: pathlib.Path, skip=frozenset()):
    """Compile every layer's kernels and XLA paths; yields a `Report` per (layer, kernel)
    not in `skip`. libtpu dumps every pass (gigabytes over a network): each program's files
    are deleted once read."""
    import jax
    import jax.numpy as jnp
    from adder_layers import LAYERS
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    from adderjax import geometry, xla
    from kernels import adder_tpu
    from kernels.tpu_blocks import GENERATIONS, TpuBlocks

    gen = GENERATIONS[generation]
    topology = topologies.get_topology_desc(platform="tpu", topology_name=gen.topology)
    on_tpu = SingleDeviceSharding(topology.devices[0])
    one = jnp.float32(1.0)
    seen: set = set()
    _new_files(dump, seen)
    for net in nets:
        for name, layer in LAYERS[net].items():
            (h, w, cin), kernel_hw, cout, s, pads, (ho, wo) = _layer_shapes(layer, batch)
            x = jax.ShapeDtypeStruct((batch, h, w, cin), jnp.float32, sharding=on_tpu)
            f = jax.ShapeDtypeStruct((*kernel_hw, cin, cout), jnp.float32, sharding=on_tpu)
            g = jax.ShapeDtypeStruct((batch, ho, wo, cout), jnp.float32, sharding=on_tpu)
            geom = geometry.conv_geometry(x.shape, f.shape, (s, s), pads)
            k, m = kernel_hw[0] * kernel_hw[1] * cin, batch * ho * wo
            for kern in ("forward", "input_grad"):
                if (f"{net} {name}", kern) in skip:
                    continue
                blocks = TpuBlocks.get_default(kern, k=k, o=cout, m=m, generation=generation)
                geo = dict(strides=(s, s), pads=pads, blocks=blocks)
                if kern == "forward":
                    fn, args = (lambda x, w, geo=geo: adder_tpu.forward(x, w, **geo)), (x, f)
                    xla_fn = lambda x, w, geom=geom: xla.forward(x, w, one, geom, 1.0)  # noqa: B023
                else:
                    fn = lambda x, w, g, geo=geo: adder_tpu.input_grad(x, w, g, **geo)
                    args = (x, f, g)
                    xla_fn = lambda x, w, g, geom=geom: xla.input_grad(
                        x,
                        w,
                        g,
                        one,
                        geom,
                        1.0,
                        "hardtanh",  # noqa: B023
                    )
                jax.jit(fn).trace(*args).lower().compile()
                files = _new_files(dump, seen)
                mine = [p for p in _final_bundles(files) if "adder_" in p.name and "_tpu" in p.name]
                kernel_loop = hot_loop(mine[0])
                _delete(files)
                jax.jit(xla_fn).trace(*args).lower().compile()
                files = _new_files(dump, seen)
                loops = {p: hot_loop(p, "vsub.f32") for p in _final_bundles(files)}
                hottest = max(loops, key=lambda p: loops[p].ops["vsub.f32"])
                fill = tile_fill(files, hottest)
                _delete(files)
                kp, op, rp = blocks.padded(kern, k=k, o=cout, m=m)
                yield Report(
                    layer=f"{net} {name}",
                    kernel=kern,
                    terms=k * cout * m,
                    padded_vregs=kp * op * rp / 8,
                    kernel_loop=kernel_loop,
                    xla_loop=loops[hottest],
                    xla_fill=fill,
                    vmem_bytes=_block_vmem(blocks, kern),
                    hbm_bytes=_hbm_bytes(blocks, kern, kp, op, rp),
                )


def _delete(files) -> None:
    for p in files:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _block_vmem(blocks, kern) -> int:
    """VMEM of the pipelined blocks: inputs and output, double-buffered, float32."""
    rows = blocks.rows * 128 * 4
    if kern == "forward":
        return 2 * (blocks.block_k + blocks.block_o) * rows
    return 2 * (2 * blocks.block_k + blocks.block_o) * rows


def _hbm_bytes(blocks, kern, kp, op, rp) -> int:
    """Bytes the kernel's blocks move: each input block once per visit, the output once."""
    pixels = rp * 128 * 4
    if kern == "forward":  # the patches once per filter block, the output once
        return kp * pixels * (op // blocks.block_o) + op * pixels + kp * op * 4
    # the patches and the output once, the cotangent once per K block
    return 2 * kp * pixels + op * pixels * (kp // blocks.block_k) + kp * op * 4


def per_1024(loop: HotLoop, op: str = "vsub.f32", fill: float = 1.0) -> dict:
    """Bundles and ops of a hot loop per vreg of terms (1024 when fill is 1)."""
    vregs = loop.ops[op] * fill
    if not vregs:  # no such op in the loop: nothing to count terms by
        nan = float("nan")
        return dict.fromkeys(("bundles", "valu", "valu_per_bundle", "vld", "vst"), nan)
    return {
        "bundles": loop.bundles / vregs,
        "valu": loop.valu() / vregs,
        "valu_per_bundle": loop.valu() / loop.bundles,
        "vld": loop.ops["vld"] / loop.bundles,
        "vst": loop.ops["vst"] / loop.bundles,
    }


def header(generation: str) -> list[str]:
    from kernels.tpu_blocks import GENERATIONS

    gen = GENERATIONS[generation]
    return [
        f"TPU {generation}: {gen.valu_slots} VALU slots a bundle, clock {gen.clock_hz / 1e9:.2f} "
        f"GHz, HBM {gen.hbm_bytes_per_s / 1e9:.0f} GB/s a TensorCore; batch 32, float32",
        "",
        "| layer | kernel | ideal bundles/1024 | kernel bundles/1024 | x ideal | VALU ops/1024 "
        "| VALU/bundle | vld/bundle | vst/bundle | VMEM KiB | kernel us | VALU ideal us | HBM us "
        "| XLA bundles/1024 | XLA / kernel |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def row(r: Report, generation: str) -> str:
    from kernels.tpu_blocks import GENERATIONS

    gen = GENERATIONS[generation]
    ideal = IDEAL_VALU[r.kernel] / gen.valu_slots
    mine = per_1024(r.kernel_loop)
    theirs = per_1024(r.xla_loop, fill=r.xla_fill)
    seconds = mine["bundles"] * r.padded_vregs / gen.clock_hz / gen.cores
    ideal_s = ideal * r.terms / 1024 / gen.clock_hz / gen.cores
    hbm_s = r.hbm_bytes / (gen.hbm_bytes_per_s * gen.cores)
    return (
        f"| {r.layer} | {r.kernel} | {ideal:.2f} | {mine['bundles']:.2f} | "
        f"{mine['bundles'] / ideal:.2f} | {mine['valu']:.2f} | {mine['valu_per_bundle']:.2f} "
        f"| {mine['vld']:.2f} | {mine['vst']:.2f} | {r.vmem_bytes / 1024:.0f} | "
        f"{seconds * 1e6:.0f} | {ideal_s * 1e6:.0f} | {hbm_s * 1e6:.0f} | "
        f"{theirs['bundles']:.2f} | {theirs['bundles'] / mine['bundles']:.2f} |"
    )


def table(reports, generation: str) -> str:
    return "\n".join([*header(generation), *(row(r, generation) for r in reports)])


def main(generation: str, nets, batch: int = 32, out: str | None = None, workdir=None):
    """Runs in a process of its own: libtpu reads its dump flags once, when it starts."""
    from kernels.tpu_blocks import GENERATIONS

    if generation not in GENERATIONS:
        sys.exit(f"--generation must be one of {tuple(GENERATIONS)}, got {generation!r}")
    import importlib.util

    if importlib.util.find_spec("libtpu") is None:
        sys.exit('benchmarks/kernels.py --tpu needs libtpu: pip install -e ".[tpu-aot]"')
    with tempfile.TemporaryDirectory() as tmp:
        dump = pathlib.Path(workdir or tmp)
        dump.mkdir(parents=True, exist_ok=True)
        os.environ["LIBTPU_INIT_ARGS"] = f"--xla_jf_dump_to={dump}"
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", GENERATIONS[generation].accelerator_type)
        # No TPU is used: libtpu only compiles, so another process may hold it too.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        lines = header(generation)
        # Rows of an earlier, interrupted report in `out` are kept, their layers not redone.
        old = (
            pathlib.Path(out).read_text().splitlines() if out and pathlib.Path(out).exists() else []
        )
        kept = [line for line in old[len(lines) :] if line.startswith("| ")]
        lines += kept
        skip = {tuple(c.strip() for c in line.split("|")[1:3]) for line in kept}
        print("\n".join(lines), flush=True)
        for report in run(generation, nets, batch, dump, skip):  # a row as each layer compiles
            lines.append(row(report, generation))
            print(lines[-1], flush=True)
            if out:
                pathlib.Path(out).write_text("\n".join(lines) + "\n")
