"""adderjax.sr_models: VDSR and EDSR as AdderSR or CNN, their parts, their sizes by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adderjax import adder_conv, count_ops, sr_models
from train import sr_metrics


def _init(model, x):
    return model.init(jax.random.key(0), x, train=False)


def _count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", ["vdsr", "edsr"])
@pytest.mark.parametrize("adder", [True, False])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_the_input(name, adder, scale):
    small = {"vdsr": dict(depth=4), "edsr": dict(num_blocks=1)}[name]
    model = sr_models.get_sr_model(
        name, scale=scale, layer="adder" if adder else "conv", features=8, **small
    )
    x = jax.ShapeDtypeStruct((2, 7, 5, 3), jnp.float32)  # odd sizes
    variables = jax.eval_shape(lambda x: _init(model, x), x)
    y = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert y.shape == (2, 7 * scale, 5 * scale, 3) and y.dtype == jnp.float32


def test_parameter_counts_of_the_published_cnns():
    """EDSR baseline x2: 1,369,859 parameters (the paper's 1.37M); VDSR on RGB: 668,227."""
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    edsr = jax.eval_shape(lambda x: _init(sr_models.EDSR(scale=2, layer="conv"), x), x)
    conv = 64 * 64 * 9 + 64
    head, tail, up2 = 3 * 64 * 9 + 64, 64 * 3 * 9 + 3, 64 * 256 * 9 + 256
    assert _count(edsr["params"]) == head + 16 * 2 * conv + conv + up2 + tail == 1_369_859
    vdsr = jax.eval_shape(lambda x: _init(sr_models.VDSR(scale=2, layer="conv"), x), x)
    assert _count(vdsr["params"]) == head + 18 * conv + tail == 668_227
    edsr4 = jax.eval_shape(lambda x: _init(sr_models.EDSR(scale=4, layer="conv"), x), x)
    assert _count(edsr4["params"]) == 1_369_859 + up2  # x4: two x2 stages
    assert "batch_stats" not in edsr  # the CNNs have no BN


def test_adder_sr_layers_and_switches():
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    full = jax.eval_shape(lambda x: _init(sr_models.EDSR(scale=2, num_blocks=2), x), x)
    unit = full["params"]["block_1_unit2"]
    assert set(unit) == {"adder", "bn", "power"} and unit["adder"]["adder"].shape == (3, 3, 64, 64)
    assert set(full["batch_stats"]["body_end"]["bn"]) == {"mean", "var"}
    assert set(full["params"]["head"]) == {"kernel", "bias"}  # first, upsampler, last: convs
    assert set(full["params"]["upsample_0"]) == {"kernel", "bias"}
    bare = sr_models.EDSR(scale=2, num_blocks=2, power_activation=False)
    bare = jax.eval_shape(lambda x: _init(bare, x), x)
    assert set(bare["params"]["block_1_unit2"]) == {"adder", "bn"}


def test_self_shortcut_adds_the_input_before_the_relu():
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 4))
    kw = dict(features=4, power_activation=False)
    with_shortcut = sr_models.AdderUnit(**kw)
    variables = with_shortcut.init(jax.random.key(0), x)
    without = sr_models.AdderUnit(**kw, self_shortcut=False)
    # BN (at init: the identity on running statistics 0 and 1, up to eps) of the adder
    # output, plus x, then ReLU; with relu=False (where the CNN's conv has none) no ReLU, so
    # the identity's negative half passes.
    bn = jnp.sqrt(1 + 1e-5)
    adder_out = (without.apply(variables, x), with_shortcut.apply(variables, x))
    pre = sr_models.AdderUnit(**kw, relu=False).apply(variables, x)
    assert float(jnp.min(adder_out[0])) == 0.0  # -|x - w| / bn <= 0: all cut by the ReLU
    raw = adder_conv(x, variables["params"]["adder"]["adder"]) / bn
    np.testing.assert_allclose(adder_out[1], jnp.maximum(raw + x, 0), atol=1e-5)
    np.testing.assert_allclose(pre, raw + x, atol=1e-5)
    assert float(jnp.min(pre)) < 0
    with pytest.raises(ValueError, match="as many input as output channels"):
        sr_models.AdderUnit(features=5).init(jax.random.key(0), x)


def test_edsr_block_scale_defaults():
    # 0.1 where both adder layers of a block carry their input (the block would double it),
    # EDSR's 1 otherwise; an explicit res_scale wins.
    assert sr_models.EDSR().block_scale == 0.1
    assert sr_models.EDSR(self_shortcut=False).block_scale == 1.0
    assert sr_models.EDSR(layer="conv").block_scale == 1.0
    assert sr_models.EDSR(res_scale=0.5).block_scale == 0.5
    x = jnp.full((1, 8, 8, 3), 100.0)
    model = sr_models.EDSR(num_blocks=1, features=8, power_activation=False)
    variables = _init(model, x)
    out = {r: model.clone(res_scale=r).apply(variables, x, train=False) for r in (None, 0.1, 1.0)}
    np.testing.assert_array_equal(out[None], out[0.1])
    assert not np.allclose(out[0.1], out[1.0])


def test_power_activation():
    act = sr_models.PowerActivation()
    x = jnp.array([-4.0, -0.25, 0.0, 0.25, 9.0])
    variables = act.init(jax.random.key(0), x)
    assert float(variables["params"]["alpha"]) == 1.0
    np.testing.assert_allclose(act.apply(variables, x), x, rtol=1e-6)  # alpha 1: identity
    half = {"params": {"alpha": jnp.float32(0.5)}}
    np.testing.assert_allclose(act.apply(half, x), [-2, -0.5, 0, 0.5, 3], rtol=1e-6)
    # d/dalpha sum sign(x)|x|^alpha = sum sign(x)|x|^alpha log|x|; finite at 0, as d/dx.
    grad_alpha = jax.grad(lambda a: jnp.sum(act.apply({"params": {"alpha": a}}, x)))(0.5)
    nonzero = np.array([-4.0, -0.25, 0.25, 9.0])
    want = np.sum(np.sign(nonzero) * np.abs(nonzero) ** 0.5 * np.log(np.abs(nonzero)))
    np.testing.assert_allclose(grad_alpha, want, rtol=1e-5)
    grad_x = jax.grad(lambda x: jnp.sum(act.apply(half, x)))(x)
    assert np.all(np.isfinite(grad_x)) and float(grad_x[2]) == 0.0


def test_pixel_shuffle_is_pytorchs():
    """PyTorch: out[n, c, h r + i, w r + j] = in[n, c r^2 + i r + j, h, w] (NCHW)."""
    n, h, w, c, r = 2, 3, 4, 5, 3
    x = jnp.arange(n * h * w * c * r * r, dtype=jnp.float32).reshape(n, h, w, c * r * r)
    y = np.asarray(sr_models.pixel_shuffle(x, r))
    assert y.shape == (n, h * r, w * r, c)
    x = np.asarray(x)
    for b, hh, ww, cc, i, j in [(0, 0, 0, 0, 0, 0), (1, 2, 3, 4, 2, 1), (0, 1, 2, 3, 1, 2)]:
        assert y[b, hh * r + i, ww * r + j, cc] == x[b, hh, ww, cc * r * r + i * r + j]
    with pytest.raises(ValueError, match="divisible by 9"):
        sr_models.pixel_shuffle(jnp.zeros((1, 2, 2, 10)), 3)


def test_vdsr_is_bicubic_plus_its_residual():
    """With its last layer zeroed VDSR returns MATLAB's bicubic upsampling of its input."""
    model = sr_models.VDSR(scale=3, depth=4, features=8, layer="adder")
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (1, 9, 7, 3)), jnp.float32)
    variables = _init(model, x)
    params = dict(variables["params"])
    params["conv_out"] = jax.tree.map(jnp.zeros_like, params["conv_out"])
    out = model.apply({**variables, "params": params}, x, train=False)
    want = sr_metrics.imresize(np.asarray(x[0], np.float64), 3)
    np.testing.assert_allclose(out[0], want, atol=2e-3)


def test_adder_edsr_body_has_no_multiplications():
    edsr = sr_models.EDSR(scale=2, num_blocks=4, features=32)
    cnn = sr_models.EDSR(scale=2, num_blocks=4, features=32, layer="conv")
    adder_count = count_ops(edsr, (1, 16, 16, 3), train=False)
    cnn_count = count_ops(cnn, (1, 16, 16, 3), train=False)
    kinds = {layer.name: layer.kind for layer in adder_count.layers}
    assert kinds["block_0_unit1/adder"] == "adder" and kinds["upsample_0"] == "conv"
    body = [x for x in adder_count.layers if x.name.startswith(("block_", "body_end"))]
    assert len(body) == 9 and all(x.multiplications == 0 for x in body)
    # What is left multiplicative (the paper convention drops head and tail): the upsampler.
    upsample = [x for x in cnn_count.layers if x.name == "upsample_0"]
    assert adder_count.multiplications == upsample[0].multiplications > 0
    assert adder_count.energy_pj < cnn_count.energy_pj


def test_unknown_model_and_bad_structure():
    with pytest.raises(ValueError, match="unknown SR model name='srcnn'"):
        sr_models.get_sr_model("srcnn")
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="scale must be one of"):
        _init(sr_models.EDSR(scale=5, num_blocks=1, features=4), x)
    with pytest.raises(ValueError, match="depth >= 3"):
        _init(sr_models.VDSR(depth=2, features=4), x)
