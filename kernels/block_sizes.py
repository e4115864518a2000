"""Tile sizes of the adder kernels, their launch arithmetic and the static model that picks them."""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

from kernels import tile_costs

__all__ = ["KERNELS", "BlockSizes", "Launch", "blocks_per_sm", "launch", "relative_cost"]

Kernel = Literal["forward", "input_grad", "filter_grad"]
KERNELS: tuple[Kernel, ...] = ("forward", "input_grad", "filter_grad")

# Enough programs for a few waves on a 132-SM H100 before the filter gradient's pixel
# reduction is split.
TARGET_PROGRAMS = 1024
# The layer get_default assumes when it is not told: batch 32 of a 16x16 map under 3x3.
_DEFAULT_ROWS, _DEFAULT_TAPS = 32 * 18 * 18, 9
# sm_90 (H100/H200): 132 SMs, 64 K registers, 228 KiB shared memory, 2048 threads and 32
# blocks an SM; 8 warps (2 per scheduler) taken as the fewest that hide load latency.
SMS, REGISTERS_PER_SM, SHARED_PER_SM, THREADS_PER_SM, BLOCKS_PER_SM = (
    132,
    65536,
    228 << 10,
    2048,
    32,
)
MIN_ACTIVE_WARPS = 8


def _is_power_of_2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
    """Tiles of one adder kernel; every size is a power of two, as Triton requires.

    Attributes:
      block_m: output pixels (forward, filter gradient) or input pixels (input gradient)
        per tile, rows of the phase-flat layout (`kernels.layout`).
      block_c: input channels per tile: the forward's unrolled step of rank-1 updates, the
        input gradient's accumulator columns, the filter gradient's output rows.
      block_o: output channels per tile: the forward's accumulator columns, the input
        gradient's unrolled step, the filter gradient's output columns.
      num_warps, num_stages: Triton launch parameters.
      splits: filter gradient only: the pixel reduction is cut into this many slices, each
        written to its own output and summed afterwards in a fixed order (deterministic,
        no atomics). None picks enough slices to fill the GPU.
    """

    block_m: int
    block_c: int
    block_o: int
    num_warps: int = 4
    num_stages: int = 2
    splits: int | None = None

    def __post_init__(self):
        for name in ("block_m", "block_c", "block_o", "num_warps"):
            value = getattr(self, name)
            if not _is_power_of_2(value):
                raise ValueError(f"BlockSizes.{name} must be a power of two, got {value!r}")
        if not (isinstance(self.num_stages, int) and self.num_stages >= 1):
            raise ValueError(
                f"BlockSizes.num_stages must be a positive int, got {self.num_stages!r}"
            )
        if self.splits is not None and not (isinstance(self.splits, int) and self.splits >= 1):
            raise ValueError(
                f"BlockSizes.splits must be None or a positive int, got {self.splits!r}"
            )

    @classmethod
    def get_default(
        cls,
        kernel: str,
        *,
        in_channels: int,
        out_channels: int,
        rows: int | None = None,
        taps: int | None = None,
    ) -> BlockSizes:
        """The tile that the static SASS model ranks fastest for `kernel` on a layer.

        Args:
          kernel: "forward", "input_grad" or "filter_grad".
          in_channels, out_channels: the layer's channels.
          rows: grid points of the phase-flat layout (`PhaseLayout.rows`: batch x Hq x Wq);
            None assumes batch 32 of a 16x16 map.
          taps: kh * kw; None assumes 3x3.

        Every candidate of `kernels.tile_costs` (compiled for sm_90 offline: registers
        <= 255, no spills, shared memory within the 227 KiB of a block) is costed as its
        hot-loop and other instructions times the layer's trip count and programs, with
        programs dealt in waves to 132 SMs, slowed where fewer than 8 warps of it are
        resident on an SM (`relative_cost`); the cheapest wins, ties to the smaller tile.
        `python benchmarks/kernels.py --tune` measures the table anew.
        """
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        rows = _DEFAULT_ROWS if rows is None else rows
        taps = _DEFAULT_TAPS if taps is None else taps
        best = None
        for entry in tile_costs.TILES[kernel]:
            tile = cls(
                block_m=entry.block_m,
                block_c=entry.block_c,
                block_o=entry.block_o,
                num_warps=entry.num_warps,
                num_stages=entry.num_stages,
            )
            if entry.spill_bytes or entry.registers > 255:
                continue
            plan = launch(
                kernel, tile, in_channels=in_channels, out_channels=out_channels, rows=rows,
                taps=taps,
            )  # fmt: skip
            per_program = entry.other_instructions + plan.trips * entry.loop_instructions
            resident = blocks_per_sm(entry.registers, 32 * tile.num_warps, entry.shared_bytes)
            cost = relative_cost(plan.programs, per_program * 32 * tile.num_warps, resident,
                                 tile.num_warps)  # fmt: skip
            key = (cost, entry.block_m * entry.block_c * entry.block_o)
            if best is None or key < best[0]:
                best = (key, tile)
        return best[1]


class Launch(NamedTuple):
    """How one kernel call runs: its programs, each one's loop trips, and the padded sizes."""

    programs: int
    trips: int
    channels_in: int  # in_channels rounded up to the tile
    channels_out: int
    splits: int  # filter gradient: slices of the pixel reduction; 1 otherwise
    rows: int  # grid rows the pixel tiles cover: the layout's rows rounded up to whole tiles


def launch(kernel: str, bs: BlockSizes, *, in_channels, out_channels, rows, taps) -> Launch:
    """Programs and loop trips of `kernel` with tiles `bs` on a layer of `rows` grid points.

    The input gradient runs one call per stride phase; this counts one call that holds all
    `taps` (a stride-1 layer exactly, a strided one as the sum of its phases, roughly).
    """
    cp, op = _round_up(in_channels, bs.block_c), _round_up(out_channels, bs.block_o)
    pixel_blocks = -(-rows // bs.block_m)
    padded = pixel_blocks * bs.block_m
    if kernel == "forward":
        programs, trips = pixel_blocks * (op // bs.block_o), taps * (cp // bs.block_c)
        return Launch(programs, trips, cp, op, 1, padded)
    if kernel == "input_grad":
        programs, trips = pixel_blocks * (cp // bs.block_c), taps * (op // bs.block_o)
        return Launch(programs, trips, cp, op, 1, padded)
    tiles = taps * (cp // bs.block_c) * (op // bs.block_o)
    splits = bs.splits or max(1, min(pixel_blocks, -(-TARGET_PROGRAMS // tiles)))
    blocks_per_split = -(-pixel_blocks // splits)
    splits = -(-pixel_blocks // blocks_per_split)
    return Launch(
        tiles * splits, blocks_per_split, cp, op, splits, splits * blocks_per_split * bs.block_m
    )


def blocks_per_sm(registers: int, threads: int, shared_bytes: int) -> int:
    """Blocks of a kernel resident on one sm_90 SM, from its registers and shared memory."""
    regs = -(-max(registers, 1) // 8) * 8  # allocated in units of 8 a thread
    limits = [REGISTERS_PER_SM // (regs * threads), THREADS_PER_SM // threads, BLOCKS_PER_SM]
    if shared_bytes:
        limits.append(SHARED_PER_SM // (shared_bytes + 1024))  # 1 KiB reserved a block
    return min(limits)


def relative_cost(programs: int, per_program: float, resident: int, num_warps: int) -> float:
    """Issue slots of the busiest SM, in per-thread instructions x threads.

    Programs go to 132 SMs in waves (the busiest SM runs ``ceil(programs / 132)``); an SM
    with fewer than `MIN_ACTIVE_WARPS` warps at once cannot hide its loads' latency and is
    charged as if it issued at that fraction of its peak.
    """
    waves = -(-programs // SMS)
    active_warps = max(1, min(resident, waves)) * num_warps
    return waves * per_program / min(1.0, active_warps / MIN_ACTIVE_WARPS)
