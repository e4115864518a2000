"""The Pallas path of the op lowered for CUDA, for every adder layer of ResNet-20, VGG-small and
ResNet-50, at batch 256 (and ResNet-50's at 32).

Lowering runs the whole Triton lowering of each kernel on the CPU. It catches what interpret
mode cannot: a non-power-of-two block, a primitive without a Triton lowering, an index that
only fails in Triton's integer types. The lowered module must hold exactly the expected
Triton kernels (names included), so a silent fall-back to the XLA path fails too.
"""

import functools
import importlib.util
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import pytest

from adderjax import geometry, ops

# Appended: the kernels package (imported by adderjax above) stays ahead of the benchmark
# script of the same name.
sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import sass_model as sass  # noqa: E402  (benchmarks/sass_model.py)
from adder_layers import LAYERS  # noqa: E402  (benchmarks/adder_layers.py)

# Every layer at batch 256 (the CIFAR recipe's batch; the cubin test compiles these), and
# ResNet-50's also at 32, the ImageNet batch per GPU, where its 7x7 layers leave the smallest
# grids and the filter gradient's split over pixels changes.
PARAMS = [
    pytest.param(net, layer, batch, id=f"{net}-{layer}-b{batch}")
    for net, layers in LAYERS.items()
    for layer in layers
    for batch in ((256, 32) if net == "resnet50" else (256,))
]
TRITON_CALL = re.compile(r'custom_call @__gpu\$xla\.gpu\.triton\(.*?name = "([a-z_0-9]+)"')


def _layer(net, layer, batch, dtype=jnp.float32):
    (h, w, cin), kernel, cout, stride, pads = LAYERS[net][layer]
    x = jax.ShapeDtypeStruct((batch, h, w, cin), dtype)
    f = jax.ShapeDtypeStruct((*kernel, cin, cout), dtype)
    geom = geometry.conv_geometry(x.shape, f.shape, stride, pads)
    g = jax.ShapeDtypeStruct((batch, *geom.out_hw, cout), dtype)
    return x, f, g, geom


def _op(geom, p_static=1.0, input_grad="hardtanh"):
    # The private custom_vjp: the public op refuses "pallas" on a host without a GPU, before
    # anything could be lowered for one.
    def op(x, w, p):
        return ops._adder_conv(x, w, p, geom, p_static, input_grad, "full_precision", "pallas")

    return op


def _lower(fn, *args):
    return jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",))


def _cuda_kernels(fn, *args) -> list[str]:
    return _kernel_names(_lower(fn, *args))


def _kernel_names(lowered) -> list[str]:
    return sorted(TRITON_CALL.findall(lowered.as_text()))


@functools.cache
def _lowered_vjp(net, layer, batch, dtype, p_static, input_grad):
    """A layer's forward and pullback lowered for CUDA; cached, as lowering is most of this
    module's time and the cubin test below compiles the same programs the lowering test made
    (pytest-xdist's loadscope runs a module on one worker, in order). Every argument is
    positional, so that equal calls are equal cache keys."""
    x, w, g, geom = _layer(net, layer, batch, dtype)
    op = _op(geom, p_static, input_grad)

    def vjp(x, w, p, g):
        y, pullback = jax.vjp(op, x, w, p)
        return y, pullback(g)

    return _lower(vjp, x, w, jax.ShapeDtypeStruct((), jnp.float32), g)


def _input_grad_calls(geom):
    (sh, sw), (kh, kw) = geom.strides, geom.kernel_hw
    phases = [a * sw + b for a in range(min(sh, kh)) for b in range(min(sw, kw))]
    return [f"adder_input_grad_phase{ph}" for ph in phases]


@pytest.mark.parametrize("net, layer, batch", PARAMS)
def test_forward_and_vjp_lower_to_triton_for_cuda(net, layer, batch):
    x, w, _, geom = _layer(net, layer, batch)
    if batch == 32:  # the forward alone: one kernel (the pullback below holds it too)
        p = jax.ShapeDtypeStruct((), jnp.float32)
        assert _cuda_kernels(_op(geom), x, w, p) == ["adder_forward"]
    expected = sorted(["adder_forward", "adder_filter_grad", *_input_grad_calls(geom)])
    assert _kernel_names(_lowered_vjp(net, layer, batch, jnp.float32, 1.0, "hardtanh")) == expected


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_lowers(dtype):
    x, w, g, geom = _layer("resnet20", "stage2_down", 32, dtype)
    p = jax.ShapeDtypeStruct((), jnp.float32)

    def vjp(x, w, p, g):
        return jax.vjp(_op(geom), x, w, p)[1](g)

    assert "adder_filter_grad" in _cuda_kernels(vjp, x, w, p, g)


def test_traced_p_and_lp_input_grad_lower():
    x, w, g, geom = _layer("resnet20", "stage2_down", 32)
    p = jax.ShapeDtypeStruct((), jnp.float32)

    def vjp(x, w, p, g):
        y, pullback = jax.vjp(_op(geom, p_static=None, input_grad="lp"), x, w, p)
        return y, pullback(g)

    # A traced p switches between kernels specialised for p = 1, p = 2 and any p.
    calls = _cuda_kernels(vjp, x, w, p, g)
    assert calls.count("adder_forward") == 3
    assert calls.count("adder_input_grad_phase0") == 3
    assert calls.count("adder_filter_grad") == 1


def test_xla_path_lowers_without_triton():
    x, w, g, geom = _layer("resnet20", "stage2_down", 32)

    def op(x, w, p):
        return ops._adder_conv(x, w, p, geom, 1.0, "hardtanh", "full_precision", "xla")

    p = jax.ShapeDtypeStruct((), jnp.float32)
    assert _cuda_kernels(lambda x, w, p, g: jax.vjp(op, x, w, p)[1](g), x, w, p, g) == []


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs the triton package")
def test_kernels_compile_to_sm90_cubins_without_spills(tmp_path):
    """Every distinct kernel of every layer, compiled by Triton for an H100 (sm_90) offline.

    This goes past lowering: Triton's own passes and ptxas run, so a layout Triton cannot
    handle, a tile that overflows shared memory or spills registers fails here.
    """
    variants = [
        (net, layer, jnp.float32, 1.0, "hardtanh") for net in LAYERS for layer in LAYERS[net]
    ]
    variants += [
        ("resnet20", "stage2_down", jnp.bfloat16, 1.0, "hardtanh"),
        ("resnet20", "stage2_down", jnp.float32, None, "lp"),
    ]
    distinct = {}
    for net, layer, dtype, p_static, mode in variants:
        for call in sass.triton_calls_of(_lowered_vjp(net, layer, 256, dtype, p_static, mode)):
            # One kernel per kind, set of tile shapes and set of operations (p = 1, 2 or any
            # p): the others differ from it only in sizes and index arithmetic, not in what
            # decides registers and shared memory.
            tiles = frozenset(re.findall(r"tensor<[^>]*>", call.ttir))
            operations = frozenset(re.findall(r"= ([a-z_]+\.[a-z_.]+)", call.ttir))
            key = (call.kind, call.num_warps, call.num_stages, tiles, operations)
            distinct.setdefault(key, call)
    reports = sass.compile_calls(list(distinct.values()), tmp_path)
    assert len(reports) == len(distinct)
    for r in reports:
        assert "error" not in r, r
        # No spills; the register file and the 227 KiB of shared memory per block suffice.
        assert r["local"] == 0 and r["reg"] <= 255 and r["shared"] <= 227 * 1024, r
