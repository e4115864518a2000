"""The Pallas TPU (Mosaic) kernels of `kernels.adder_tpu`.

Every kernel against `adderjax.reference` (float32, the l_p forms, strides, padding, odd
channel counts, grids of several blocks on every axis): compiled on a TPU
(benchmarks/tpu_check.sh), in TPU interpret mode anywhere else. The op's forward and
backward lowered for TPU for every ResNet-20 layer and ResNet-50 layers of each kind (the
whole Mosaic lowering runs on the CPU). With libtpu installed (``pip install -e ".[tpu-aot]"``),
the same layers compile ahead of time for v5e and v6e (docs/testing.md).
"""

import importlib.util
import math
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adderjax import geometry, ops, reference
from kernels import adder_tpu
from kernels.tpu_blocks import GENERATIONS, TpuBlocks

sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from adder_layers import LAYERS  # noqa: E402  (benchmarks/adder_layers.py)

SAME, VALID = ((1, 1), (1, 1)), ((0, 0), (0, 0))
CASES = {
    "3x3_c3_o10": ((2, 9, 7, 3), (3, 3, 3, 10), (1, 1), SAME),
    "3x3_s2_c5_o6": ((2, 9, 7, 5), (3, 3, 5, 6), (2, 2), SAME),
    "1x1_s2_c10_o3": ((3, 8, 5, 10), (1, 1, 10, 3), (2, 2), VALID),
    "7x7_s2_c3_o5": ((1, 11, 10, 3), (7, 7, 3, 5), (2, 2), ((3, 3), (3, 3))),
    "2x3_s12_asym": ((2, 7, 9, 4), (2, 3, 4, 7), (1, 2), ((0, 1), (2, 0))),
    "3x3_negative_pad": ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((-1, 1), (1, -2))),
    # 1,152 pixels: two pixel blocks of 8 x 128, the second ragged.
    "3x3_two_pixel_blocks": ((2, 24, 24, 3), (3, 3, 3, 5), (1, 1), SAME),
}
# Small tiles: several blocks on every grid axis, and ragged last ones.
SMALL = TpuBlocks(rows=8, group=2, unroll=2, block_k=4, block_o=4)


def _arrays(name, seed=0):
    x_shape, w_shape, strides, pads = CASES[name]
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
    geo = dict(strides=strides, pads=pads)
    y_shape = jax.eval_shape(lambda x, w: reference.adder_conv_forward(x, w, strides, pads), x, w)
    g = jnp.asarray(rng.standard_normal(y_shape.shape), jnp.float32)
    return x, w, g, geo


def _tol(reduction: int):
    """Absolute tolerance for a sum of `reduction` O(1) float32 terms (as for the GPU kernels)."""
    return 2e-6 * math.sqrt(reduction) * 4


def _forward(x, w, p_value=None, **static):
    return jax.jit(lambda x, w, pv: adder_tpu.forward(x, w, p_value=pv, interpret=True, **static))(
        x, w, p_value
    )


def _input_grad(x, w, g, p_value=None, **static):
    return jax.jit(
        lambda x, w, g, pv: adder_tpu.input_grad(x, w, g, p_value=pv, interpret=True, **static)
    )(x, w, g, p_value)


def _reference(x, w, g, geo, p=1.0, input_grad="hardtanh"):
    ref = dict(strides=geo["strides"], padding=geo["pads"], p=p)
    y = jax.jit(lambda x, w: reference.adder_conv_forward(x, w, **ref))(x, w)
    dx, _ = jax.jit(
        lambda x, w, g: reference.adder_conv_backward(x, w, g, input_grad=input_grad, **ref)
    )(x, w, g)
    return y, dx


@pytest.mark.parametrize("name", sorted(CASES))
def test_kernels_match_reference(name):
    x, w, g, geo = _arrays(name)
    y = _forward(x, w, blocks=SMALL, **geo)
    dx = _input_grad(x, w, g, blocks=SMALL, **geo)
    expect_y, expect_dx = _reference(x, w, g, geo)
    assert y.dtype == dx.dtype == jnp.float32 and dx.shape == x.shape
    k = math.prod(w.shape[:3])
    np.testing.assert_allclose(y, expect_y, rtol=1e-6, atol=_tol(k) * k)
    reduction = math.prod(w.shape[:2]) * w.shape[3]
    np.testing.assert_allclose(dx, expect_dx, rtol=1e-5, atol=_tol(reduction))


@pytest.mark.parametrize("name", ["3x3_c3_o10", "1x1_s2_c10_o3"])
def test_default_blocks_match_reference(name):
    x, w, g, geo = _arrays(name)
    expect_y, expect_dx = _reference(x, w, g, geo)
    np.testing.assert_allclose(_forward(x, w, **geo), expect_y, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(_input_grad(x, w, g, **geo), expect_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [2.0, 1.5, None])
def test_lp_forms_match_reference(p):
    """p = 2 and 1.5 compiled in, and p read at run time (a traced p, here 1.3)."""
    x, w, g, geo = _arrays("3x3_s2_c5_o6", seed=1)
    pv = 1.3 if p is None else p
    p_value = jnp.float32(pv) if p is None else None
    y = _forward(x, w, p_value, p=p, blocks=SMALL, **geo)
    dx = _input_grad(x, w, g, p_value, p=p, input_grad="lp", blocks=SMALL, **geo)
    expect_y, expect_dx = _reference(x, w, g, geo, p=pv, input_grad="lp")
    np.testing.assert_allclose(y, expect_y, rtol=2e-6, atol=1e-4)
    np.testing.assert_allclose(dx, expect_dx, rtol=1e-5, atol=1e-5)


def test_lp_input_grad_at_p1_is_the_sign_rule():
    x, w, g, geo = _arrays("2x3_s12_asym")
    dx = _input_grad(x, w, g, p=1.0, input_grad="lp", blocks=SMALL, **geo)
    np.testing.assert_allclose(dx, _reference(x, w, g, geo, input_grad="lp")[1], atol=1e-5)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 2),
    hw=st.tuples(st.integers(3, 9), st.integers(3, 9)),
    cin=st.integers(1, 6),
    cout=st.integers(1, 9),
    kernel=st.sampled_from([(1, 1), (3, 3), (2, 3)]),
    strides=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    padding=st.sampled_from(["SAME", "VALID"]),
)
def test_random_shapes_match_reference(n, hw, cin, cout, kernel, strides, padding):
    geom = geometry.conv_geometry((n, *hw, cin), (*kernel, cin, cout), strides, padding)
    rng = np.random.default_rng(n * 100 + cin * 10 + cout)
    x = jnp.asarray(rng.standard_normal((n, *hw, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*kernel, cin, cout)), jnp.float32)
    g = jnp.asarray(rng.standard_normal((n, *geom.out_hw, cout)), jnp.float32)
    geo = dict(strides=geom.strides, pads=geom.pads)
    expect_y, expect_dx = _reference(x, w, g, geo)
    np.testing.assert_allclose(_forward(x, w, blocks=SMALL, **geo), expect_y, atol=1e-4)
    np.testing.assert_allclose(_input_grad(x, w, g, blocks=SMALL, **geo), expect_dx, atol=1e-5)


def test_bad_arguments_are_one_line_errors():
    x, w, g, geo = _arrays("3x3_c3_o10")
    with pytest.raises(ValueError, match="float64"):
        adder_tpu.forward(np.zeros((1, 4, 4, 3)), w, **geo)
    with pytest.raises(ValueError, match="block_k must be a multiple of unroll"):
        bad = TpuBlocks(rows=8, group=2, unroll=3, block_k=4, block_o=4)
        adder_tpu.forward(x, w, blocks=bad, **geo)
    with pytest.raises(ValueError, match="input_grad must be"):
        adder_tpu.input_grad(x, w, g, input_grad="sign", **geo)
    with pytest.raises(ValueError, match="g must be"):
        adder_tpu.input_grad(x, w, g[:, :1], **geo)
    with pytest.raises(ValueError, match="rows must be a multiple of 8"):
        TpuBlocks(rows=12, group=2, unroll=2, block_k=4, block_o=4)
    with pytest.raises(ValueError, match="generation must be one of"):
        TpuBlocks.get_default("forward", k=9, o=4, m=100, generation="v9")


# ------------------------------------------------------------------ lowering for TPU

ALL_LAYERS = [(net, layer) for net in ("resnet20", "resnet50") for layer in LAYERS[net]]
# Lowered in CI: every ResNet-20 layer and one ResNet-50 layer of each kind (lowering a
# ResNet-50 layer's unrolled kernels takes 2-4 s); with libtpu every layer compiles.
LOWERED = [
    (net, layer)
    for net, layer in ALL_LAYERS
    if net == "resnet20" or layer in ("stem", "s1_3x3", "s3_expand", "s4_3x3_down", "fc")
]


def _layer(net, layer, batch=32):
    (h, w, cin), kernel, cout, stride, pads = LAYERS[net][layer]
    x = jax.ShapeDtypeStruct((batch, h, w, cin), jnp.float32)
    f = jax.ShapeDtypeStruct((*kernel, cin, cout), jnp.float32)
    geom = geometry.conv_geometry(x.shape, f.shape, stride, pads)
    g = jax.ShapeDtypeStruct((batch, *geom.out_hw, cout), jnp.float32)
    return x, f, g, geom


def _vjp_fn(geom):
    # The private custom_vjp: the public op refuses "pallas" on a host without a GPU or TPU.
    def op(x, w, p):
        return ops._adder_conv(x, w, p, geom, 1.0, "hardtanh", "full_precision", "pallas")

    def vjp(x, w, p, g):
        y, pullback = jax.vjp(op, x, w, p)
        return y, pullback(g)

    return vjp


@pytest.mark.parametrize("net, layer", LOWERED, ids=[f"{net}-{layer}" for net, layer in LOWERED])
def test_op_lowers_to_mosaic_for_tpu(net, layer):
    x, w, g, geom = _layer(net, layer)
    p = jax.ShapeDtypeStruct((), jnp.float32)
    text = jax.jit(_vjp_fn(geom)).trace(x, w, p, g).lower(lowering_platforms=("tpu",)).as_text()
    names = sorted(re.findall(r'kernel_name = "(\w+)"', text))
    pixels = x.shape[0] * geom.out_hw[0] * geom.out_hw[1]
    if pixels < adder_tpu.MIN_PIXELS:  # the dense layers at batch 32: XLA's path
        assert names == [] and "stablehlo.while" in text
    else:
        assert names == ["adder_forward_tpu", "adder_input_grad_tpu"]
    assert "stablehlo.convolution" in text  # the filter gradient, XLA's on the MXU
    assert "triton" not in text


# ------------------------------------------------------- ahead-of-time compilation

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason='needs libtpu: pip install -e ".[tpu-aot]"')
@pytest.mark.parametrize("generation", ["v5e", "v6e"])
def test_every_layer_compiles_for_tpu(generation, monkeypatch):
    # libtpu only compiles here; the pytest workers may each load it.
    monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", GENERATIONS[generation].accelerator_type)
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    topology = topologies.get_topology_desc(
        platform="tpu", topology_name=GENERATIONS[generation].topology
    )
    on_tpu = SingleDeviceSharding(topology.devices[0])
    for net, layer in ALL_LAYERS:
        x, w, g, geom = _layer(net, layer)
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_tpu) for a in (x, w, g)]
        p = jax.ShapeDtypeStruct((), jnp.float32, sharding=on_tpu)
        compiled = jax.jit(_vjp_fn(geom)).trace(args[0], args[1], p, args[2]).lower().compile()
        assert compiled.memory_analysis() is not None, (net, layer)


def test_a_flax_model_lowers_to_mosaic_for_tpu():
    """LeNet-5-BN as an AdderNet, its loss and gradient in train mode, at batch 16: both
    kernels for conv2 (1,600 output pixels), XLA's path for the dense fc1 and fc2 (16 pixels,
    under `adder_tpu.MIN_PIXELS`), no Triton (the training step on a mesh:
    tests/test_distributed.py)."""
    from unittest import mock

    from adderjax import models

    model = models.get_model("lenet5_bn", num_classes=10, implementation="pallas")
    x = jax.ShapeDtypeStruct((16, 28, 28, 1), jnp.float32)
    # The op refuses "pallas" on a host without a GPU or TPU before anything is lowered.
    with mock.patch.object(ops, "available_implementations", lambda: ("pallas", "xla")):
        variables = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False)
        )

        def loss(params, batch_stats, x):
            logits, _ = model.apply(
                {"params": params, "batch_stats": batch_stats},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            return logits.sum()

        lowered = jax.jit(jax.grad(loss)).trace(variables["params"], variables["batch_stats"], x)
        text = lowered.lower(lowering_platforms=("tpu",)).as_text()
    names = re.findall(r'kernel_name = "(\w+)"', text)
    from adderjax import optim

    adder_layers = sum(jax.tree.leaves(optim.adder_mask(variables["params"])))  # conv2, fc1, fc2
    assert adder_layers == 3
    assert names.count("adder_forward_tpu") == names.count("adder_input_grad_tpu") == 1
    assert "triton" not in text
