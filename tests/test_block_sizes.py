"""BlockSizes: validation, the launch arithmetic, and the defaults the static model picks."""

import pytest

from kernels import BlockSizes, tile_costs
from kernels.block_sizes import KERNELS, blocks_per_sm, launch, relative_cost


def _pow2(n):
    return n >= 1 and n & (n - 1) == 0


# (in, out channels, rows): ResNet-20 and ResNet-50 3x3 layers at batch 32, the stem's
# 3 channels, a classifier, a single pixel.
LAYERS = [(16, 16, 32 * 34 * 34), (64, 64, 32 * 10 * 10), (64, 64, 32 * 58 * 58),
          (256, 256, 32 * 16 * 16), (512, 512, 32 * 9 * 9), (3, 16, 32 * 34 * 34),
          (2048, 1000, 32), (1, 1, 1)]  # fmt: skip


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cin, cout, rows", LAYERS)
def test_defaults_come_from_the_measured_table_and_fit(kernel, cin, cout, rows):
    bs = BlockSizes.get_default(kernel, in_channels=cin, out_channels=cout, rows=rows, taps=9)
    assert all(_pow2(v) for v in (bs.block_m, bs.block_c, bs.block_o, bs.num_warps))
    (entry,) = [
        e
        for e in tile_costs.TILES[kernel]
        if (e.block_m, e.block_c, e.block_o, e.num_warps, e.num_stages)
        == (bs.block_m, bs.block_c, bs.block_o, bs.num_warps, bs.num_stages)
    ]
    assert entry.spill_bytes == 0 and entry.registers <= 255
    if kernel == "filter_grad":
        assert min(bs.block_c, bs.block_o) >= 16  # tl.dot's smallest tile


def test_the_table_covers_every_kernel_with_fitting_tiles():
    for kernel in KERNELS:
        assert sum(e.spill_bytes == 0 and e.registers <= 255 for e in tile_costs.TILES[kernel]) >= 8


@pytest.mark.parametrize("kernel", KERNELS)
def test_small_channel_counts_are_not_padded_to_large_tiles(kernel):
    bs = BlockSizes.get_default(kernel, in_channels=16, out_channels=16, rows=32 * 34 * 34, taps=9)
    plan = launch(kernel, bs, in_channels=16, out_channels=16, rows=32 * 34 * 34, taps=9)
    assert (plan.channels_in, plan.channels_out) == (16, 16)


def test_large_layers_get_the_tiles_with_the_fewest_loop_instructions_per_term():
    def per_term(e):
        return e.loop_instructions * 32 * e.num_warps / (e.block_m * e.block_c * e.block_o)

    for kernel, target in (("forward", 2.5), ("input_grad", 5.0), ("filter_grad", 1.5)):
        bs = BlockSizes.get_default(kernel, in_channels=256, out_channels=256, rows=32 * 16 * 16)
        (entry,) = [
            e
            for e in tile_costs.TILES[kernel]
            if (e.block_m, e.block_c, e.block_o, e.num_warps) ==
            (bs.block_m, bs.block_c, bs.block_o, bs.num_warps)
        ]  # fmt: skip
        assert per_term(entry) <= target, (kernel, bs)


def test_small_layers_trade_tile_size_for_resident_warps():
    """A 7x7 ResNet-50 layer at batch 32 has few pixels: the pick fills the 132 SMs."""
    for kernel in ("forward", "input_grad"):
        bs = BlockSizes.get_default(kernel, in_channels=512, out_channels=512, rows=32 * 9 * 9)
        plan = launch(kernel, bs, in_channels=512, out_channels=512, rows=32 * 9 * 9, taps=9)
        assert plan.programs >= 132, (kernel, bs)


def test_launch_arithmetic():
    bs = BlockSizes(block_m=64, block_c=8, block_o=32)
    plan = launch("forward", bs, in_channels=20, out_channels=40, rows=130, taps=9)
    # 3 pixel blocks x 2 channel blocks; 9 taps x 3 blocks of 8 input channels (24 >= 20).
    assert plan == (6, 27, 24, 64, 1, 192)  # 130 rows padded to 3 tiles of 64
    plan = launch("input_grad", bs, in_channels=20, out_channels=40, rows=130, taps=9)
    assert plan == (3 * 3, 9 * 2, 24, 64, 1, 192)
    dw = BlockSizes(block_m=16, block_c=16, block_o=16, splits=4)
    # 130 rows = 9 pixel blocks in 4 splits of 3 blocks (the last split is cut to what is left).
    assert launch("filter_grad", dw, in_channels=20, out_channels=40, rows=130, taps=9) == (
        9 * 2 * 3 * 3, 3, 32, 48, 3, 3 * 3 * 16,
    )  # fmt: skip


def test_relative_cost_charges_waves_and_idle_schedulers():
    assert relative_cost(132, 10.0, resident=4, num_warps=8) == 10.0  # one wave of 8 warps
    assert relative_cost(264, 10.0, resident=4, num_warps=4) == 20.0  # two blocks an SM
    assert relative_cost(265, 10.0, resident=4, num_warps=4) == 30.0  # a third wave
    # One 4-warp block per SM: half of the 8 warps that hide latency, charged double.
    assert relative_cost(100, 10.0, resident=4, num_warps=4) == 20.0
    assert blocks_per_sm(255, 128, 0) == 2 and blocks_per_sm(32, 128, 0) == 16
    assert blocks_per_sm(32, 128, 100 * 1024) == 2


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
