"""BlockSizes: validation and the default heuristic."""

import pytest

from kernels import BlockSizes
from kernels.block_sizes import KERNELS


def _pow2(n):
    return n >= 1 and n & (n - 1) == 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cin, cout", [(1, 1), (3, 16), (10, 3), (64, 64), (2048, 1000)])
def test_defaults_are_powers_of_two_within_the_register_budget(kernel, cin, cout):
    bs = BlockSizes.get_default(kernel, in_channels=cin, out_channels=cout)
    assert all(_pow2(v) for v in (bs.block_m, bs.block_c, bs.block_o, bs.num_warps))
    assert 16 <= bs.block_m <= 128
    if kernel == "filter_grad":
        assert min(bs.block_c, bs.block_o) >= 16  # tl.dot's smallest tile
    else:
        assert bs.block_m * bs.block_c * bs.block_o <= 8192


def test_small_channel_counts_get_small_reduction_tiles():
    assert BlockSizes.get_default("forward", in_channels=3, out_channels=64).block_c == 4
    assert BlockSizes.get_default("input_grad", in_channels=64, out_channels=1).block_o == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_m=48, block_c=4, block_o=16), r"block_m must be a power of two, got 48"),
        (dict(block_m=64, block_c=0, block_o=16), r"block_c must be a power of two, got 0"),
        (dict(block_m=64, block_c=4, block_o=True), r"block_o must be a power of two"),
        (dict(block_m=64, block_c=4, block_o=16, num_warps=3), r"num_warps must be a power"),
        (dict(block_m=64, block_c=4, block_o=16, num_stages=0), r"num_stages must be"),
        (dict(block_m=64, block_c=4, block_o=16, splits=0), r"splits must be None or"),
    ],
)
def test_bad_block_sizes_raise_one_clear_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        BlockSizes(**kwargs)
    assert "\n" not in str(info.value)


def test_unknown_kernel_raises():
    with pytest.raises(ValueError, match=r"kernel must be one of"):
        BlockSizes.get_default("conv", in_channels=3, out_channels=3)


def test_block_sizes_are_frozen_and_keyword_only():
    bs = BlockSizes(block_m=64, block_c=4, block_o=16)
    with pytest.raises(AttributeError):
        bs.block_m = 32
    with pytest.raises(TypeError):
        BlockSizes(64, 4, 16)
