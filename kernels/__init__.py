"""Pallas GPU kernels of the adder op, kept apart from autodiff and Flax.

`forward`, `input_grad` and `filter_grad` take NHWC inputs and HWIO filters and run on the
Triton backend of Pallas (`kernels.adder_triton`); `BlockSizes` sets their tiles. Every entry
point takes ``interpret=True`` to run in Pallas interpret mode on any backend (how CI checks
them). A Mosaic GPU version would sit beside `adder_triton` as its own module.
"""

from kernels.adder_triton import filter_grad, forward, input_grad
from kernels.block_sizes import BlockSizes

__all__ = ["BlockSizes", "filter_grad", "forward", "input_grad"]
