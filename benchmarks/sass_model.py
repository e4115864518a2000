"""Static SASS model of the adder kernels: compiled for sm_90 offline, counted instruction by
instruction, turned into occupancy and an H100 time estimate.

No GPU is needed: a function is lowered for CUDA on the CPU (`triton_calls`), each Triton
kernel's IR is compiled to a cubin by the `triton` package of the test extra in a separate
process (`benchmarks/compile_ttir.py`), and the disassembly is read back (`parse_sass`,
`loops`). `analyze` puts the counts beside what the kernel is meant to do (its tile, the
loop's trip count, the layer's useful terms) in a `KernelReport`.

The model (`KernelReport`):
* hot loop: the instructions of the kernel's innermost backward branch, per *term* (one
  ``|x - w|`` accumulate, one input-gradient term, one multiply-accumulate of the filter
  gradient); a thread does ``block_m * block_c * block_o / threads`` of them an iteration.
* whole kernel: every instruction outside the loop counted once per thread (an upper
  bound: branches skip some), the loop times its trip count, times threads and programs,
  divided by the layer's useful terms (N Ho Wo Cout kh kw Cin): the padding of channels to
  the tile, the discarded grid points of the phase-flat layout and the prologue all count.
* time: an SM issues 4 warp instructions a clock (its 128 FP32 lanes); programs are dealt
  to 132 SMs, so the busiest SM runs ``ceil(programs / 132)`` of them, charged more where
  fewer than 8 warps are resident (`kernels.block_sizes.relative_cost`, the same model
  that picks the default tiles). The kernel alone: `benchmarks/kernels.py --sass` adds the
  layout copies at HBM speed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import pathlib
import re
import subprocess
import sys

import adder_layers  # benchmarks/adder_layers.py, a sibling
import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir
from jax._src.lib.mlir import ir
from jax._src.lib.triton import dialect as tt_dialect

import kernels
from kernels import block_sizes
from kernels import layout as layout_lib

__all__ = [
    "CLOCK_HZ",
    "HBM_BYTES_PER_S",
    "IDEAL",
    "Instruction",
    "KernelReport",
    "LANES_PER_SM",
    "TritonCall",
    "analyze",
    "compile_calls",
    "loops",
    "parse_sass",
    "triton_calls",
    "triton_calls_of",
    "default_tiles",
    "kernel_calls",
    "layer_arrays",
    "tune",
    "tune_candidates",
]

COMPILE_SCRIPT = pathlib.Path(__file__).with_name("compile_ttir.py")

# Ideal instructions per term (kernels/adder_triton.py's docstring): forward FADD then FADD
# with the |.| operand modifier; input gradient (HardTanh) FADD, FMNMX, FMNMX, FFMA; filter
# gradient one FFMA per multiply-accumulate.
IDEAL = {"forward": 2, "input_grad": 4, "filter_grad": 1}
FP32_OPCODES = ("FADD", "FFMA", "FMUL", "FMNMX", "FSEL", "FSETP", "MUFU")


# H100 SXM5 (NVIDIA datasheet): 128 FP32 lanes an SM (one thread instruction each a clock)
# at 1.98 GHz boost, HBM3 at 3.35 TB/s; the SM count and occupancy limits are
# kernels.block_sizes', which ranks tiles with the same model.
LANES_PER_SM = 128
CLOCK_HZ = 1.98e9
HBM_BYTES_PER_S = 3.35e12


@dataclasses.dataclass(frozen=True)
class TritonCall:
    """One Triton kernel of a lowered function."""

    name: str
    num_warps: int
    num_stages: int
    grid: tuple[int, int, int]
    ttir: str

    @property
    def programs(self) -> int:
        return math.prod(self.grid)

    @property
    def kind(self) -> str:
        """forward, input_grad or filter_grad, from the kernel's name."""
        return self.name.removeprefix("adder_").rstrip("0123456789").removesuffix("_phase")


def triton_calls(fn, *args) -> list[TritonCall]:
    """The Triton kernels of ``jax.jit(fn)(*args)`` lowered for CUDA, in program order."""
    return triton_calls_of(jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)))


def triton_calls_of(lowered: jax.stages.Lowered) -> list[TritonCall]:
    """The Triton kernels of a program already lowered for CUDA, in program order."""
    module = lowered.compiler_ir("stablehlo")
    found = []

    def walk(op):
        for region in op.regions:
            for block in region.blocks:
                for child in block.operations:
                    if child.operation.name == "stablehlo.custom_call":
                        found.append(child.operation)
                    walk(child.operation)

    walk(module.operation)
    calls = []
    for op in found:
        config = ir.DictAttr(op.attributes["mhlo.backend_config"])
        ctx = mlir.make_ir_context()
        tt_dialect.register_dialect(ctx)
        with ctx:
            text = str(ir.Module.parse(ir.StringAttr(config["ir"]).value_bytes))
        value = lambda key, config=config: ir.IntegerAttr(config[key]).value
        calls.append(
            TritonCall(
                name=ir.StringAttr(config["name"]).value,
                num_warps=value("num_warps"),
                num_stages=value("num_stages"),
                grid=(value("grid_x"), value("grid_y"), value("grid_z")),
                ttir=text,
            )
        )
    return calls


def compile_calls(calls, directory) -> list[dict]:
    """Compiles each call for sm_90 in `directory`; one dict per call (see compile_ttir.py).

    Identical IR is compiled once. Two processes share the files, one per core.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files, names = {}, []
    for call in calls:
        key = (call.ttir, call.num_warps, call.num_stages)
        if key not in files:
            files[key] = f"{len(files):04d}-{call.name}.w{call.num_warps}.s{call.num_stages}.ttir"
        names.append(files[key])
    parts = [directory / f"part{i}" for i in range(2)]
    for part in parts:
        part.mkdir(exist_ok=True)
    for i, ((text, _, _), name) in enumerate(files.items()):
        (parts[i % 2] / name).write_text(text)
    procs = [
        subprocess.Popen(
            [sys.executable, str(COMPILE_SCRIPT), str(part)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in parts
    ]
    results = {}
    for part, proc in zip(parts, procs, strict=True):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"compile_ttir.py failed on {part}: {err[-2000:]}")
        for line in out.splitlines():
            r = json.loads(line)
            if "error" not in r:
                r["sass"] = (part / r["file"]).with_suffix(".sass").read_text()
            results[r["file"]] = r
    return [results[name] for name in names]


@dataclasses.dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. "FADD.FTZ"
    text: str

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH_TARGET = re.compile(r"BRA\s+(?:`\(\.L_x_\d+\)\s*)?(0x[0-9a-f]+)")


def parse_sass(text: str) -> list[Instruction]:
    """The instructions of a ``cuobjdump -sass`` listing (one kernel) in address order."""
    out = []
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            body = m.group(2)
            tokens = body.split()
            if tokens[0].startswith("@"):  # a predicate guard
                tokens = tokens[1:]
            out.append(Instruction(int(m.group(1), 16), tokens[0], body))
    return out


def loops(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Every backward branch's body (target through branch); the trailing self-branch that
    ends every kernel is not a loop."""
    index = {ins.address: i for i, ins in enumerate(instructions)}
    found = []
    for i, ins in enumerate(instructions):
        if ins.base != "BRA":
            continue
        m = _BRANCH_TARGET.search(ins.text)
        if m is None:
            continue
        target = int(m.group(1), 16)
        if target < ins.address and target in index:
            found.append(instructions[index[target] : i + 1])
    return found


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """One compiled kernel of one layer, counted (see the module docstring)."""

    label: str
    kind: str
    block: tuple[int, int, int]  # (block_m, block_c, block_o)
    num_warps: int
    programs: int
    useful_terms: int  # the layer's terms this call computes (its phase's share for dx)
    registers: int
    spill_bytes: int
    shared_bytes: int
    trips: int  # runs of the hot (innermost) loop's body: the product of the trip counts
    loop_instructions: int
    loop_histogram: dict
    other_instructions: int  # executed per thread outside the hot loop (outer loops included)

    @property
    def threads(self) -> int:
        return 32 * self.num_warps

    @property
    def terms_per_iteration(self) -> float:
        """Terms one thread does in one loop iteration."""
        return math.prod(self.block) / self.threads

    @property
    def per_term(self) -> float:
        """Hot-loop instructions per term."""
        return self.loop_instructions / self.terms_per_iteration

    @property
    def fp32_per_term(self) -> float:
        """FP32 arithmetic instructions of the loop per term (the ideal when nothing else is
        there; twice it would mean a second, unrolled copy of the loop body)."""
        fp = sum(self.loop_histogram.get(op, 0) for op in FP32_OPCODES)
        return fp / self.terms_per_iteration

    @property
    def thread_instructions(self) -> int:
        per_thread = self.other_instructions + self.trips * self.loop_instructions
        return per_thread * self.threads * self.programs

    @property
    def whole_per_term(self) -> float:
        """Every instruction of every thread per useful term of the layer."""
        return self.thread_instructions / self.useful_terms

    def blocks_per_sm(self) -> int:
        return block_sizes.blocks_per_sm(self.registers, self.threads, self.shared_bytes)

    def seconds(self) -> float:
        """Issue-bound H100 time of the kernel (no layout copies), as
        `kernels.block_sizes.relative_cost` ranks tiles."""
        per_program = self.thread_instructions / self.programs
        cost = block_sizes.relative_cost(
            self.programs, per_program, self.blocks_per_sm(), self.num_warps
        )
        return cost / (LANES_PER_SM * CLOCK_HZ)


def analyze(label: str, call: TritonCall, compiled: dict, block, useful_terms: int):
    """A `KernelReport` from a call, its `compile_calls` result and its tile."""
    if "error" in compiled:
        raise RuntimeError(f"{label}: {compiled['error']}")
    instructions = parse_sass(compiled["sass"])
    found = sorted(loops(instructions), key=lambda loop: loop[0].address)
    trips = list(compiled["trips"])
    if len(trips) > len(found):  # a loop of one trip is unrolled away by LLVM or ptxas
        trips = [t for t in trips if t != 1]
    nested = all(
        inner[0].address >= outer[0].address and inner[-1].address <= outer[-1].address
        for outer, inner in zip(found, found[1:], strict=False)
    )
    if len(trips) != len(found) or not nested:
        raise RuntimeError(
            f"{label}: expected nested loops with constant trip counts, found {len(found)} "
            f"loops in SASS and trip counts {compiled['trips']} in the Triton IR"
        )
    # Per thread: every instruction outside the loops once, each loop's own instructions
    # (its body less the loop inside it) once per trip of it and of every loop around it.
    executed, runs = len(instructions) - (len(found[0]) if found else 0), 1
    for depth, (loop, n) in enumerate(zip(found, trips, strict=True)):
        runs *= n
        inner = len(found[depth + 1]) if depth + 1 < len(found) else 0
        executed += runs * (len(loop) - inner)
    # The hot loop: the innermost; a kernel whose loops were all unrolled is one iteration.
    loop = found[-1] if found else instructions
    histogram = collections.Counter(ins.base for ins in loop)
    return KernelReport(
        label=label,
        kind=call.kind,
        block=tuple(block),
        num_warps=call.num_warps,
        programs=call.programs,
        useful_terms=useful_terms,
        registers=compiled["reg"],
        spill_bytes=compiled["local"],
        shared_bytes=compiled["shared"],
        trips=runs,
        loop_instructions=len(loop),
        loop_histogram=dict(histogram.most_common()),
        other_instructions=executed - runs * len(loop),
    )


# ------------------------------------------------- what --sass and --tune compile

KINDS = ("forward", "input_grad", "filter_grad")


def layer_arrays(layer, batch: int, dtype=jnp.float32):
    """Abstract (x, w, g) of a `benchmarks/adder_layers.py` layer and its strides and pads."""
    (h, w, cin), (kh, kw), cout, s, pads = layer
    lay = layout_lib.make_layout((batch, h, w, cin), (kh, kw), (s, s), pads)
    x = jax.ShapeDtypeStruct((batch, h, w, cin), dtype)
    f = jax.ShapeDtypeStruct((kh, kw, cin, cout), dtype)
    g = jax.ShapeDtypeStruct((batch, *lay.out_hw, cout), dtype)
    return x, f, g, dict(strides=(s, s), pads=pads), lay


def default_tiles(layer, batch: int) -> dict:
    """The tiles the kernels pick for themselves on this layer (`BlockSizes.get_default`)."""
    (_, _, cin), _, cout, _, _ = layer
    lay = layer_arrays(layer, batch)[-1]
    return {
        kind: kernels.BlockSizes.get_default(
            kind, in_channels=cin, out_channels=cout, rows=lay.rows, taps=lay.num_taps
        )
        for kind in KINDS
    }


def kernel_calls(layer, batch: int, tiles: dict, kinds=KINDS):
    """[(kind, TritonCall, useful terms)] of the three kernels with the given tiles."""
    x, f, g, geo, lay = layer_arrays(layer, batch)
    terms = adder_layers.useful_terms(layer, batch)
    fns = {
        "forward": (
            lambda x, f: kernels.forward(x, f, block_sizes=tiles["forward"], **geo),
            (x, f),
        ),
        "input_grad": (
            lambda x, f, g: kernels.input_grad(x, f, g, block_sizes=tiles["input_grad"], **geo),
            (x, f, g),
        ),
        "filter_grad": (
            lambda x, f, g: kernels.filter_grad(x, f, g, block_sizes=tiles["filter_grad"], **geo),
            (x, f, g),
        ),
    }
    out = []
    for kind in kinds:
        fn, args = fns[kind]
        for call in triton_calls(fn, *args):
            useful = terms
            if kind == "input_grad":  # one call per stride phase: its taps' share
                phase = int(call.name.removeprefix("adder_input_grad_phase"))
                useful = terms * len(lay.phase_taps(phase)) // lay.num_taps
            out.append((kind, call, useful))
    return out


# Candidate tiles for --tune: powers of two whose accumulator holds 16 to 128 values a thread.
def tune_candidates(kind: str) -> list:
    out = []
    if kind == "filter_grad":
        for m in (16, 32, 64):
            for c in (16, 32, 64):
                for o in (16, 32, 64):
                    for warps in (1, 2, 4):
                        if 8 <= c * o // (32 * warps) <= 64:
                            out.append(kernels.BlockSizes(
                                block_m=m, block_c=c, block_o=o, num_warps=warps
                            ))  # fmt: skip
        return out
    if kind == "forward":
        # Accumulator (block_o, block_m): each thread holds all block_o channels of a few pixels.
        for m in (64, 128, 256, 512, 1024):
            for o in (8, 16, 32, 64):
                for step in (4, 8, 16):  # the unrolled rank-1 updates an iteration
                    for warps in (2, 4, 8):
                        per_thread = m * o // (32 * warps)
                        if 16 <= per_thread <= 128 and per_thread * step <= 1024:
                            out.append(kernels.BlockSizes(
                                block_m=m, block_c=step, block_o=o, num_warps=warps
                            ))  # fmt: skip
        return out
    for m in (32, 64, 128, 256):
        for c in (16, 32, 64, 128):  # the accumulator's columns
            for step in (4, 8, 16):  # the unrolled rank-1 updates an iteration
                for warps in (2, 4, 8):
                    per_thread = m * c // (32 * warps)
                    if 16 <= per_thread <= 128 and per_thread * step <= 1024:
                        out.append(
                            kernels.BlockSizes(block_m=m, block_c=c, block_o=step, num_warps=warps)
                        )
    return out


TUNE_LAYER = ("resnet50", "s3_3x3")


def tune(workdir, batch: int = 32, kinds=KINDS) -> dict:
    """{kind: [TileCost-like dicts]} of every candidate of `kinds`, compiled on TUNE_LAYER."""
    layer = adder_layers.LAYERS[TUNE_LAYER[0]][TUNE_LAYER[1]]
    entries = []
    for kind in kinds:
        for bs in tune_candidates(kind):
            tiles = dict.fromkeys(KINDS, bs)
            for _, call, useful in kernel_calls(layer, batch, tiles, kinds=(kind,)):
                entries.append((kind, bs, call, useful))
    compiled = compile_calls([e[2] for e in entries], workdir)
    table = {kind: [] for kind in kinds}
    for (kind, bs, call, useful), result in zip(entries, compiled, strict=True):
        if "error" in result:
            print(f"skipped {kind} {bs}: {result['error'][:200]}", file=sys.stderr)
            continue
        r = analyze(kind, call, result, (bs.block_m, bs.block_c, bs.block_o), useful)
        table[kind].append(
            dict(
                block_m=bs.block_m,
                block_c=bs.block_c,
                block_o=bs.block_o,
                num_warps=bs.num_warps,
                num_stages=bs.num_stages,
                registers=r.registers,
                spill_bytes=r.spill_bytes,
                shared_bytes=r.shared_bytes,
                loop_instructions=r.loop_instructions,
                other_instructions=r.other_instructions,
            )
        )
    return table
