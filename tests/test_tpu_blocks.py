"""The TPU kernels' block shapes and the cost model that picks them (`kernels.tpu_blocks`)."""

import pathlib
import sys

import pytest

from kernels.tpu_blocks import GENERATIONS, KERNELS, LANES, SUBLANES, TpuBlocks

sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from adder_layers import LAYERS  # noqa: E402  (benchmarks/adder_layers.py)


def _calls(batch=32):
    for net in ("resnet20", "resnet50", "vgg_small"):
        for (h, w, cin), (kh, kw), cout, s, ((t, b), (left, r)) in LAYERS[net].values():
            ho, wo = (h + t + b - kh) // s + 1, (w + left + r - kw) // s + 1
            yield kh * kw * cin, cout, batch * ho * wo


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
@pytest.mark.parametrize("kernel", KERNELS)
def test_default_blocks_are_valid_for_every_layer(kernel, generation):
    gen = GENERATIONS[generation]
    for k, o, m in _calls():
        b = TpuBlocks.get_default(kernel, k=k, o=o, m=m, generation=generation)
        reduce, shared = (b.block_k, b.block_o) if kernel == "forward" else (b.block_o, b.block_k)
        assert reduce % b.unroll == 0 and shared % b.group == 0, b
        kp, op, rp = b.padded(kernel, k=k, o=o, m=m)
        assert kp >= k and op >= o and rp * LANES >= m and rp % b.rows == 0
        live = (b.group + 1 if kernel == "forward" else 2 * b.group + 1) * b.rows // SUBLANES
        assert live <= gen.vregs_for_accumulators, b
        # The pipelined blocks fit the scoped VMEM, the filter block SMEM.
        assert 2 * (b.block_k + b.block_o) * b.rows * LANES * 4 <= 16 << 20
        assert 2 * b.block_k * b.block_o * 4 <= 1 << 20


def test_the_model_amortises_the_scalar_broadcast_on_big_layers():
    """ResNet-50's 3x3 layers get blocks of 16 or 32 rows (two or four vregs a filter value)."""
    b = TpuBlocks.get_default("forward", k=576, o=64, m=32 * 56 * 56)
    assert b.rows >= 16
    small = TpuBlocks(rows=8, group=8, unroll=8, block_k=576, block_o=64)
    args = dict(k=576, o=64, m=32 * 56 * 56, generation="v5e")
    assert b.modelled_bundles("forward", **args) < small.modelled_bundles("forward", **args)


def test_megacore_generations_count_both_cores():
    gen4, gen5e = GENERATIONS["v4"], GENERATIONS["v5e"]
    assert gen4.cores == 2 and gen5e.cores == 1
    assert 0.9e9 < gen4.clock_hz < 1.2e9 and 1.4e9 < gen5e.clock_hz < 1.6e9
    one_block = TpuBlocks(rows=32, group=8, unroll=8, block_k=64, block_o=64)
    # One pixel block: one core of a v4 idles, so it costs as much as on one core.
    args = dict(k=64, o=64, m=32 * 128)
    cost = one_block.modelled_bundles("forward", generation="v4", **args)
    two = one_block.modelled_bundles("forward", generation="v4", k=64, o=64, m=64 * 128)
    assert two == pytest.approx(cost)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(rows=12), "rows must be a multiple of 8"),
        (dict(group=0), "group must be a positive int"),
        (dict(unroll=True), "unroll must be a positive int"),
    ],
)
def test_bad_blocks_are_one_line_errors(bad, match):
    fields = dict(rows=8, group=2, unroll=2, block_k=4, block_o=4) | bad
    with pytest.raises(ValueError, match=match):
        TpuBlocks(**fields)
    with pytest.raises(ValueError, match="kernel must be one of"):
        TpuBlocks.get_default("filter_grad", k=9, o=4, m=10)
