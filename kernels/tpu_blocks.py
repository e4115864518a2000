"""Block shapes of the TPU adder kernels, chosen per TPU generation by a small cost model.

The kernels (`kernels.adder_tpu`) put pixels on the vector unit's lanes and sublanes: a block
of ``rows`` x 128 pixels is ``rows / 8`` vregs (8 x 128 float32 each), and every term of the
reduction is a vector op on such vregs with one scalar (a filter value) read from SMEM and
broadcast by a ``vstv``. So a reduction step costs, per register group,

    forward        group * (3 * rows / 8 + 1)   VALU ops (vsub, vand for |.|, vadd; vstv)
    input gradient group * (4 * rows / 8 + 1)   VALU ops (vsub, vclamps, vmul, vadd; vstv)

over ``valu_slots`` slots a bundle, and each filter value's scalar load and address
arithmetic on the two scalar slots. More rows amortise the ``vstv`` and the scalar work;
more accumulators than the register file holds spill (`Generation.vregs_for_accumulators`).
Padding the pixel count up to whole blocks is wasted work, and a grid with fewer than
`Generation.cores` blocks on its parallel axes leaves a TensorCore idle.
`TpuBlocks.get_default` minimises the modelled bundles over a few candidates;
`benchmarks/kernels.py --tpu` reads the compiled bundles back.

The generation table: the VALU slots a bundle were measured from compiled bundles (the most
VALU ops found in one bundle of a VALU-bound kernel: 2 on v4, 4 on v5e, v5p and v6e;
docs/kernels.md); the clock is derived from the bf16 peak, MXU count and MXU width that
jax's own `jax._src.pallas.mosaic.tpu_info` lists for each chip (peak = MXUs x width^2 x 2 x
clock, per TensorCore); VMEM and HBM bandwidth are that table's.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["GENERATIONS", "KERNELS", "Generation", "TpuBlocks"]

Kernel = Literal["forward", "input_grad"]
KERNELS: tuple[Kernel, ...] = ("forward", "input_grad")

LANES, SUBLANES = 128, 8
# VALU ops a vreg of terms costs, and the scalar broadcast each (scalar, register group) pays.
VALU_OPS_PER_VREG = {"forward": 3, "input_grad": 4}
# Bundles of scalar work per filter value read from SMEM (its sld and address arithmetic on
# the two scalar slots), as compiled for v5e: about 2 scalar ops a value in the forward, 4 in
# the input gradient. With 8-row blocks (one vreg a value) this, not the VALU, is the bound.
SCALAR_BUNDLES_PER_VALUE = {"forward": 1.05, "input_grad": 2.1}
# Bytes of one pipelined input block (Pallas double-buffers it): well inside the scoped VMEM
# of every generation (16 MiB on v4, more on later ones).
INPUT_BLOCK_BYTES = 2 << 20
# Filter values of one SMEM block (double-buffered: 512 KiB of the 1 MiB SMEM).
SMEM_FILTER_VALUES = 64 << 10


@dataclasses.dataclass(frozen=True)
class Generation:
    """What the cost model and the bundle report need of one TPU generation (per TensorCore)."""

    name: str
    topology: str  # for jax.experimental.topologies.get_topology_desc
    accelerator_type: str  # TPU_ACCELERATOR_TYPE for libtpu's start-up
    valu_slots: int  # measured from compiled bundles
    cores: int  # TensorCores a chip (megacore: the grid's parallel axes are split over them)
    bf16_flops: float  # per TensorCore, jax's tpu_info
    mxus: int
    mxu_width: int
    hbm_bytes_per_s: float  # per TensorCore, jax's tpu_info
    vmem_bytes: int
    vregs_for_accumulators: int  # of the 64 vregs, what accumulators may take without spills

    @property
    def clock_hz(self) -> float:
        """Derived from the bf16 peak: peak = MXUs x width^2 x 2 flops x clock."""
        return self.bf16_flops / (self.mxus * self.mxu_width**2 * 2)


GENERATIONS: dict[str, Generation] = {
    g.name: g
    for g in (
        # name, topology, TPU_ACCELERATOR_TYPE, VALU slots, cores, bf16 flop/s, MXUs, MXU
        # width, HBM bytes/s, VMEM, vregs for accumulators
        Generation("v4", "v4:2x2x1", "v4-8", 2, 2, 1.375e14, 4, 128, 6.15e11, 16 << 20, 16),
        Generation("v5e", "v5e:2x2", "v5litepod-4", 4, 1, 1.97e14, 4, 128, 8.2e11, 128 << 20, 40),
        Generation("v5p", "v5p:2x2x1", "v5p-8", 4, 2, 2.295e14, 4, 128, 1.23e12, 64 << 20, 40),
        Generation("v6e", "v6e:2x2", "v6e-4", 4, 1, 9.2e14, 2, 256, 1.64e12, 128 << 20, 40),
    )
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _even_split(n: int, cap: int, multiple: int) -> int:
    """The block for a dimension of n: at most cap (rounded down to the multiple, at least
    one multiple), as few blocks as that allows, of equal size (the least padding)."""
    cap = max(multiple, cap // multiple * multiple)
    fewest = -(-n // cap)
    # A few more blocks may pad less (576 in blocks of 96, not 5 of 120).
    sizes = [min(cap, _round_up(-(-n // b), multiple)) for b in range(fewest, fewest + 4)]
    return min(sizes, key=lambda size: (_round_up(n, size), -size))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuBlocks:
    """The tiles of one TPU kernel call.

    rows: pixel rows of 128 in a block (a multiple of 8: ``rows / 8`` vregs a value).
    group: accumulators in flight, each ``rows / 8`` vregs: filters (forward) or patch
      entries (input gradient) that one loaded input vreg serves.
    unroll: reduction steps unrolled in one loop iteration (the accumulators are loaded and
      stored once an iteration).
    block_k: patch entries (taps x input channels) of a block; the forward's reduction.
    block_o: filters of a block; the input gradient's reduction.
    """

    rows: int
    group: int
    unroll: int
    block_k: int
    block_o: int

    def __post_init__(self):
        for name in ("rows", "group", "unroll", "block_k", "block_o"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TpuBlocks.{name} must be a positive int, got {v!r}")
        if self.rows % SUBLANES:
            raise ValueError(f"TpuBlocks.rows must be a multiple of 8, got {self.rows}")

    def padded(self, kernel: Kernel, *, k: int, o: int, m: int) -> tuple[int, int, int]:
        """(K, O, pixel rows) padded to whole blocks."""
        return (
            _round_up(k, self.block_k),
            _round_up(o, self.block_o),
            _round_up(-(-m // LANES), self.rows),
        )

    def modelled_bundles(self, kernel: Kernel, *, k: int, o: int, m: int, generation: str):
        """Bundles the model expects for the whole call (the hot loops only)."""
        gen = GENERATIONS[generation]
        kp, op, rp = self.padded(kernel, k=k, o=o, m=m)
        vregs = self.rows // SUBLANES
        per_scalar = VALU_OPS_PER_VREG[kernel] * vregs + 1  # + the vstv
        scalars = kp * op * (rp // self.rows)
        valu = scalars * per_scalar / gen.valu_slots
        # Loads: each unrolled iteration loads its accumulators and, for each step, one
        # input value (forward: the patch entry; input gradient: the cotangent) a group, on
        # one load slot a bundle (the stores of the accumulators on their own slot).
        groups = (op if kernel == "forward" else kp) // self.group
        steps = (kp if kernel == "forward" else op) // self.unroll
        loads = groups * steps * (self.group + self.unroll) * vregs * (rp // self.rows)
        if kernel == "input_grad":
            loads += groups * steps * self.group * vregs * (rp // self.rows)  # the patches
        memory = loads
        blocks = (rp // self.rows) * ((kp // self.block_k) if kernel == "input_grad" else 1)
        idle = max(1.0, gen.cores / max(blocks, 1))  # a TensorCore without a block
        scalar = scalars * SCALAR_BUNDLES_PER_VALUE[kernel]
        return max(valu, memory, scalar) * idle / gen.cores

    @classmethod
    def get_default(cls, kernel: Kernel, *, k: int, o: int, m: int, generation: str = "v5e"):
        """The candidate with the fewest modelled bundles for a (K, O, pixels) call."""
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if generation not in GENERATIONS:
            raise ValueError(f"generation must be one of {tuple(GENERATIONS)}, got {generation!r}")
        gen = GENERATIONS[generation]
        forward = kernel == "forward"
        reduce_dim, shared_dim = (k, o) if forward else (o, k)
        best = None
        for rows in (8, 16, 32):
            for group in (8, 4):  # the larger group first: fewer loads a term on a tie
                # Live vregs: the accumulators and the loaded input value (forward), or the
                # accumulators, their patch entries and the cotangent (input gradient).
                live = (group + 1 if forward else 2 * group + 1) * rows // SUBLANES
                if live > gen.vregs_for_accumulators:
                    continue  # they would spill
                unroll = 8
                # Blocks of (entries, rows, 128) float32 of at most INPUT_BLOCK_BYTES, and
                # filter blocks of at most SMEM_FILTER_VALUES in SMEM.
                cap = INPUT_BLOCK_BYTES // (rows * LANES * 4)
                # The filter block's minor dimension (block_o) at most 128: past one SMEM
                # tile row each scalar's address costs shifts and masks (measured: the
                # scalar slots, not the VALU, became the bound at 256).
                block_r = _even_split(reduce_dim, cap if forward else min(cap, 128), unroll)
                smem_cap = max(group, SMEM_FILTER_VALUES // block_r)
                shared_cap = min(cap, 128 if forward else 256, smem_cap)
                block_s = _even_split(shared_dim, shared_cap, group)
                block_k, block_o = (block_r, block_s) if forward else (block_s, block_r)
                cand = cls(rows=rows, group=group, unroll=unroll, block_k=block_k, block_o=block_o)
                cost = cand.modelled_bundles(kernel, k=k, o=o, m=m, generation=generation)
                if best is None or cost < best[0]:
                    best = (cost, cand)
        return best[1]
