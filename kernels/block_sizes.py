"""Tile sizes of the adder kernels and the heuristic that picks them."""

from __future__ import annotations

import dataclasses

__all__ = ["KERNELS", "BlockSizes"]

KERNELS = ("forward", "input_grad", "filter_grad")

# The elementwise kernels hold a (block_m, block_c, block_o) difference tensor in registers;
# past 8192 elements per 4 warps (64 per thread) Triton spills.
_MAX_TILE_ELEMENTS = 8192


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _is_power_of_2(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
    """Tiles of one adder kernel; every size is a power of two, as Triton requires.

    Attributes:
      block_m: output pixels (forward, filter gradient) or input pixels (input gradient)
        per tile, rows of the phase-flat layout (`kernels.layout`).
      block_c: input channels per tile (the reduction step of the forward).
      block_o: output channels per tile (the reduction step of the input gradient).
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
    def get_default(cls, kernel: str, *, in_channels: int, out_channels: int) -> BlockSizes:
        """Tiles for `kernel` ("forward", "input_grad" or "filter_grad") of a layer.

        Untuned guesses from the register budget (no GPU has been available to tune them):
        the largest channel tile up to 32 that is not mostly padding, then as many pixels as
        the budget allows, at least 16 and at most 128.
        """
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "filter_grad":
            # tl.dot tiles: every dimension >= 16.
            block_c = min(32, max(16, _next_power_of_2(in_channels)))
            block_o = min(32, max(16, _next_power_of_2(out_channels)))
            return cls(block_m=64, block_c=block_c, block_o=block_o)
        if kernel == "forward":
            # Output channels are the accumulator's columns; input channels are the short
            # reduction step.
            block_o = min(32, max(16, _next_power_of_2(out_channels)))
            block_c = min(4, _next_power_of_2(in_channels))
            block_m = min(128, _MAX_TILE_ELEMENTS // (block_o * block_c))
            return cls(block_m=block_m, block_c=block_c, block_o=block_o)
        block_c = min(32, max(16, _next_power_of_2(in_channels)))
        block_o = min(4, _next_power_of_2(out_channels))
        block_m = min(128, _MAX_TILE_ELEMENTS // (block_o * block_c))
        return cls(block_m=block_m, block_c=block_c, block_o=block_o)
