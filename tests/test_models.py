"""Tests for adderjax.models: parameter counts, layer names and shapes, forward/backward, p."""

# The big models are only traced (jax.eval_shape); real runs use ResNet-20 and LeNet-5-BN with
# batch 4, numpy inputs and variables (jax.random compiles slowly per shape) and one jit each.

import doctest
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from adderjax import models
from adderjax import nn as adder_nn
from adderjax.batch_norm import BatchNorm

IMAGENET = (2, 224, 224, 3)
CIFAR = (2, 32, 32, 3)
MNIST = (2, 28, 28, 1)
# name: (input shape, num_classes) per registered model.
CASES = {
    "lenet5_bn": (MNIST, 10),
    "lenetpp": (MNIST, 10),
    "resnet20": (CIFAR, 10),
    "resnet32": (CIFAR, 10),
    "vgg_small": (CIFAR, 10),
    "resnet18": (IMAGENET, 1000),
    "resnet50": (IMAGENET, 1000),
}


# --------------------------------------------------------------------------- expected counts
# Each layer as np.array([params, batch_stats]), written from the architectures, not the code.


def conv(k, cin, cout, bias=False):
    return np.array([k * k * cin * cout + (cout if bias else 0), 0])


def dense(din, dout, bias=False):
    return np.array([din * dout + (dout if bias else 0), 0])


def bn(c):
    return np.array([2 * c, 2 * c])  # scale, bias | mean, var


def basic_block(cin, planes, stride):
    n = conv(3, cin, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
    if stride != 1 or cin != planes:
        n += conv(1, cin, planes) + bn(planes)  # downsample_0, downsample_1
    return n, planes


def bottleneck(cin, planes, stride):
    out = 4 * planes
    n = conv(1, cin, planes) + bn(planes)
    n += conv(3, planes, planes) + bn(planes)
    n += conv(1, planes, out) + bn(out)
    if stride != 1 or cin != out:
        n += conv(1, cin, out) + bn(out)
    return n, out


def resnet(block, stage_sizes, width, stem_k, num_classes, fc_bias):
    n = conv(stem_k, 3, width) + bn(width)
    cin = width
    for i, blocks in enumerate(stage_sizes):
        for j in range(blocks):
            m, cin = block(cin, width * 2**i, 2 if i > 0 and j == 0 else 1)
            n += m
    return n + conv(1, cin, num_classes, bias=fc_bias) + bn(num_classes)  # fc, bn2


def expected_counts(name):
    if name == "lenet5_bn":
        return (
            conv(5, 1, 6) + bn(6)  # conv1, bn1
            + conv(5, 6, 16) + bn(16)  # conv2, bn2
            + dense(5 * 5 * 16, 120) + bn(120)  # fc1, bn3
            + dense(120, 84) + bn(84)  # fc2, bn4
            + dense(84, 10, bias=True)  # fc3
        )  # fmt: skip
    if name == "lenetpp":  # fc3 reads the 3-d features
        return (
            expected_counts("lenet5_bn")
            - dense(84, 10, bias=True)
            + (dense(84, 3) + bn(3) + dense(3, 10, bias=True))
        )
    if name == "vgg_small":
        return (
            conv(3, 3, 128) + bn(128) + conv(3, 128, 128) + bn(128)
            + conv(3, 128, 256) + bn(256) + conv(3, 256, 256) + bn(256)
            + conv(3, 256, 512) + bn(512) + conv(3, 512, 512) + bn(512)
            + dense(4 * 4 * 512, 10, bias=True)  # fc
        )  # fmt: skip
    return {
        "resnet20": lambda: resnet(basic_block, (3, 3, 3), 16, 3, 10, fc_bias=False),
        "resnet32": lambda: resnet(basic_block, (5, 5, 5), 16, 3, 10, fc_bias=False),
        "resnet18": lambda: resnet(basic_block, (2, 2, 2, 2), 64, 7, 1000, fc_bias=True),
        "resnet50": lambda: resnet(bottleneck, (3, 4, 6, 3), 64, 7, 1000, fc_bias=True),
    }[name]()


# The totals the arithmetic above gives, written out. ResNet-18/50: torchvision's 11,689,512
# and 25,557,032 plus 2 * 1000 for the scale and bias of bn2 on the logits.
TOTALS = {
    "lenet5_bn": (61_932, 452),
    "lenetpp": (61_932 - 850 + 252 + 6 + 40, 458),
    "resnet20": (272_484, 1_588),
    "resnet32": (466_916, 2_484),
    "vgg_small": (4_660_106, 3_584),
    "resnet18": (11_689_512 + 2_000, 11_600),
    "resnet50": (25_557_032 + 2_000, 55_120),
}


def test_expected_totals_match_the_per_layer_arithmetic():
    for name, totals in TOTALS.items():
        assert tuple(expected_counts(name)) == totals, name


# --------------------------------------------------------------------------- shapes and names


@functools.cache
def _abstract(name, adder, layer=None):
    """(variables, logits) shapes and dtypes of one model, traced only; ``layer`` (a kind of
    `models.LAYERS`) overrides ``adder``."""
    shape, num_classes = CASES[name]
    layer = layer or ("adder" if adder else "conv")
    model = models.get_model(name, num_classes=num_classes, layer=layer)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return variables, logits


def _flat(tree):
    return {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(tree).items()}


def _size(tree):
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("adder", [True, False], ids=["adder", "cnn"])
@pytest.mark.parametrize("name", list(CASES))
def test_counts_and_output_shape(name, adder):
    variables, logits = _abstract(name, adder)
    assert set(variables) == {"params", "batch_stats"}
    assert (_size(variables["params"]), _size(variables["batch_stats"])) == TOTALS[name]
    assert logits.shape == (2, CASES[name][1]) and logits.dtype == jnp.float32
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


# The multiplicative layers of the AdderNet: the first conv and the classifier.
FULL_PRECISION = {
    "lenet5_bn": {"conv1/kernel", "fc3/kernel"},
    "lenetpp": {"conv1/kernel", "fc3/kernel"},
    "resnet20": {"conv1/kernel", "fc/kernel"},
    "resnet32": {"conv1/kernel", "fc/kernel"},
    "vgg_small": {"conv1/kernel", "fc/kernel"},
    "resnet18": {"conv1/kernel", "fc/kernel"},
    "resnet50": {"conv1/kernel", "fc/kernel"},
}


@pytest.mark.parametrize("name", list(CASES))
def test_adder_and_cnn_differ_only_in_the_filter_name(name):
    adder = _flat(_abstract(name, True)[0]["params"])
    cnn = _flat(_abstract(name, False)[0]["params"])
    assert not any(k.endswith("/adder") for k in cnn)
    renamed = {k.removesuffix("/adder") + "/kernel" if k.endswith("/adder") else k: v
               for k, v in adder.items()}  # fmt: skip
    assert renamed == cnn
    # Every conv-like weight but the first conv and the classifier is an adder filter.
    assert {k for k in adder if k.endswith("/kernel")} == FULL_PRECISION[name]
    assert sum(k.endswith("/adder") for k in adder) > 0
    assert _flat(_abstract(name, True)[0]["batch_stats"]) == _flat(
        _abstract(name, False)[0]["batch_stats"]
    )


@pytest.mark.parametrize(
    "name, blocks",
    [
        ("resnet20", {"layer2_0", "layer3_0"}),
        ("resnet32", {"layer2_0", "layer3_0"}),
        ("resnet18", {"layer2_0", "layer3_0", "layer4_0"}),
        # The bottleneck widens 64 -> 256, so layer1_0 projects too.
        ("resnet50", {"layer1_0", "layer2_0", "layer3_0", "layer4_0"}),
    ],
)
def test_downsample_blocks(name, blocks):
    params = _abstract(name, True)[0]["params"]
    assert {k for k, v in params.items() if "downsample_0" in v} == blocks
    assert {k for k, v in params.items() if "downsample_1" in v} == blocks


def test_pytorch_key_layout():
    # The paths a converter of the reference's state dicts relies on, with their HWIO shapes.
    p20 = _flat(_abstract("resnet20", True)[0]["params"])
    assert p20["conv1/kernel"] == (3, 3, 3, 16)
    assert p20["bn1/scale"] == p20["bn1/bias"] == (16,)
    assert p20["layer1_0/conv1/adder"] == (3, 3, 16, 16)
    assert p20["layer2_0/conv1/adder"] == (3, 3, 16, 32)
    assert p20["layer2_0/downsample_0/adder"] == (1, 1, 16, 32)
    assert p20["layer2_0/downsample_1/scale"] == (32,)
    assert p20["fc/kernel"] == (1, 1, 64, 10) and "fc/bias" not in p20
    assert p20["bn2/scale"] == (10,)
    s20 = _flat(_abstract("resnet20", True)[0]["batch_stats"])
    assert s20["layer3_0/downsample_1/mean"] == s20["layer3_0/downsample_1/var"] == (64,)

    p50 = _flat(_abstract("resnet50", True)[0]["params"])
    assert p50["conv1/kernel"] == (7, 7, 3, 64)
    assert p50["layer1_0/conv1/adder"] == (1, 1, 64, 64)
    assert p50["layer2_0/conv2/adder"] == (3, 3, 128, 128)  # the stride is on the 3x3
    assert p50["layer4_2/conv3/adder"] == (1, 1, 512, 2048)
    assert p50["layer1_0/downsample_0/adder"] == (1, 1, 64, 256)
    assert p50["fc/kernel"] == (1, 1, 2048, 1000) and p50["fc/bias"] == (1000,)

    vgg = _flat(_abstract("vgg_small", True)[0]["params"])
    widths = [vgg[f"conv{i}/{'kernel' if i == 1 else 'adder'}"][-1] for i in range(1, 7)]
    assert widths == [128, 128, 256, 256, 512, 512]
    assert {f"bn{i}/scale" for i in range(1, 7)} <= set(vgg)

    lenet = _flat(_abstract("lenet5_bn", True)[0]["params"])
    assert lenet["conv2/adder"] == (5, 5, 6, 16)
    assert lenet["fc1/adder"] == (400, 120) and "fc1/bias" not in lenet
    assert lenet["fc3/kernel"] == (84, 10) and lenet["fc3/bias"] == (10,)


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = models.LeNet5BN(num_classes=10, dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct(MNIST, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x).dtype == (
        jnp.float32
    )


# --------------------------------------------------------------------------- forward, backward


def _images(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _cross_entropy(logits, labels):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _variables(name, seed=0):
    """Random variables for model ``name`` from numpy, without compiling its init.

    Adder filters N(0, 1) as their init, other weights with std 0.1, BN scale 1 and bias 0,
    running mean 0 and var 1; the real initializers are checked in `test_init`.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        kind = path[-1].key
        if kind in ("scale", "var"):
            return np.ones(a.shape, np.float32)
        if kind in ("bias", "mean"):
            return np.zeros(a.shape, np.float32)
        std = 1.0 if kind == "adder" else 0.1
        return (std * rng.normal(size=a.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, _abstract(name, True)[0])


def _as_cnn(variables):
    """The adder model's variables renamed for its CNN: ``adder`` leaves become ``kernel``."""
    flat = traverse_util.flatten_dict(variables)
    return traverse_util.unflatten_dict(
        {k[:-1] + ("kernel",) if k[-1] == "adder" else k: v for k, v in flat.items()}
    )


def test_init():
    adder, cnn = (models.LeNet5BN(num_classes=10, layer=k) for k in ("adder", "conv"))
    init = jax.jit(lambda k, x: (adder.init(k, x, train=False), cnn.init(k, x, train=False)))
    # An "rbg" key: threefry's random.normal per parameter shape triples the compile time.
    variables = init(jax.random.key(0, impl="rbg"), _images(MNIST))
    for v in variables:
        for path, a in traverse_util.flatten_dict(v, sep="/").items():
            if path.endswith(("scale", "var")):
                np.testing.assert_array_equal(a, 1.0, err_msg=path)
            if path.endswith(("bias", "mean")):
                np.testing.assert_array_equal(a, 0.0, err_msg=path)
    adder_params, cnn_params = (v["params"] for v in variables)
    stds = {
        # Adder filters: AdderConv's N(0, 1), the reference's init.
        "conv2/adder": (adder_params, 1.0),
        "fc1/adder": (adder_params, 1.0),
        # Multiplicative convs: kaiming normal, fan_out = kh * kw * cout.
        "conv1/kernel": (adder_params, (2 / (5 * 5 * 6)) ** 0.5),
        "conv2/kernel": (cnn_params, (2 / (5 * 5 * 16)) ** 0.5),
        # Dense layers: flax's default lecun_normal, fan_in.
        "fc1/kernel": (cnn_params, (1 / 400) ** 0.5),
        "fc3/kernel": (adder_params, (1 / 84) ** 0.5),
    }
    for path, (params, std) in stds.items():
        w = traverse_util.flatten_dict(params, sep="/")[path]
        assert abs(np.std(w) / std - 1) < 0.2, (path, np.std(w), std)


def test_lenetpp_adder_features_are_normalised_before_the_classifier():
    """An adder bottleneck's outputs are -l1 distances of size ~ its fan-in (84 N(0, 1)
    filters: about -75); fed straight to fc3 they made logits in the tens to hundreds and the
    AdderNet stuck at chance on Fashion-MNIST. bn5 brings them to unit scale."""
    model = models.get_model("lenetpp", num_classes=10)
    x = _images((64, 28, 28, 1))
    variables = model.init(jax.random.key(0, impl="rbg"), x, train=False)
    logits, state = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda mdl, _: mdl.name in ("features", "bn5"),
    )
    features = state["intermediates"]["features"]["__call__"][0]
    normalised = state["intermediates"]["bn5"]["__call__"][0]
    assert features.shape == normalised.shape == (64, 3)
    assert float(jnp.max(features)) < -20  # the raw l1 distances the analysis plots
    np.testing.assert_allclose(jnp.std(normalised, axis=0), 1.0, rtol=0.01)
    assert float(jnp.max(jnp.abs(logits))) < 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet20", "lenet5_bn"])
def test_train_step_and_eval(name):
    model = models.get_model(name, num_classes=10, implementation="xla")
    # Batch 4: BN over a batch of 2 maps every per-example feature (the logits' bn2, LeNet's
    # dense BNs) to +-1, and the gradient through it to almost nothing.
    shape = (4,) + CASES[name][0][1:]
    variables = _variables(name)
    x, labels = _images(shape, 1), np.array([3, 7, 0, 9])

    def loss(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return _cross_entropy(logits, labels), (logits, updates)

    grads, (train_logits, updates) = jax.jit(jax.grad(loss, has_aux=True))(
        variables["params"], variables["batch_stats"]
    )
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path
    # Every running mean moved off its zero init (momentum 0.9 keeps 0.1 of the batch mean).
    old_stats, new_stats = variables["batch_stats"], updates["batch_stats"]
    assert jax.tree.structure(new_stats) == jax.tree.structure(old_stats)
    for path, mean in traverse_util.flatten_dict(new_stats, sep="/").items():
        if path.endswith("mean"):
            assert np.any(mean != 0), path

    # Eval mode normalizes with the running averages. Set them to the statistics of this batch
    # (undoing the momentum) and each example alone reproduces its train logits: eval does not
    # look at the rest of the batch. (Fresh running stats would send an untrained AdderNet's
    # large negative outputs through ReLU to all-zero logits.)
    # The running variance moves by the unbiased batch variance (PyTorch's rule), n / (n - 1)
    # times the biased one that normalised: n is the values per feature of each layer.
    _, seen = jax.eval_shape(
        lambda v: model.apply(
            v,
            x,
            train=True,
            capture_intermediates=lambda m, _: isinstance(m, BatchNorm),
            mutable=["batch_stats", "intermediates"],
        ),
        variables,
    )
    outputs = traverse_util.flatten_dict(seen["intermediates"], sep="/")
    n = {k.removesuffix("/__call__"): math.prod(v[0].shape[:-1]) for k, v in outputs.items()}
    old_flat = traverse_util.flatten_dict(old_stats, sep="/")
    new_flat = traverse_util.flatten_dict(new_stats, sep="/")

    def undo(key):
        layer, name = key.rsplit("/", 1)
        stat = (new_flat[key] - 0.9 * old_flat[key]) / 0.1
        return stat * (n[layer] - 1) / n[layer] if name == "var" else stat

    batch = traverse_util.unflatten_dict({k: undo(k) for k in new_flat}, sep="/")
    variables = {"params": variables["params"], "batch_stats": batch}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    alone = np.concatenate([apply(variables, x[i : i + 1]) for i in range(len(x))])
    assert alone.dtype == np.float32 and np.any(alone != 0)
    np.testing.assert_allclose(alone, train_logits, rtol=1e-3, atol=1e-3)


def _adder_ps(name, p):
    """The p every adder layer of model ``name`` is called with, when the model gets ``p``."""
    variables, _ = _abstract(name, True)
    shape, num_classes = CASES[name]
    model = models.get_model(name, num_classes=num_classes)
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, (adder_nn.AdderConv, adder_nn.AdderDense)):
            seen.append(kwargs.get("p"))
        return next_fun(*args, **kwargs)

    def apply(v, x, p):
        with nn.intercept_methods(record):
            out = model.apply(v, x, train=True, p=p, mutable=["batch_stats"])
        # Identity, not equality: the model's own p (a tracer here) reaches the layer.
        seen[:] = [q is p for q in seen]
        return out

    # None is an empty pytree, so it reaches apply as None; a ShapeDtypeStruct as a tracer.
    jax.eval_shape(apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32), p)
    return seen


# One model per network and block kind (ResNet-32 and -18 only restack these blocks).
@pytest.mark.parametrize("name", ["lenet5_bn", "resnet20", "vgg_small", "resnet50"])
def test_p_reaches_every_adder_layer(name):
    variables, _ = _abstract(name, True)
    num_adders = sum(k.endswith("/adder") for k in _flat(variables["params"]))
    assert num_adders > 0
    assert _adder_ps(name, jax.ShapeDtypeStruct((), jnp.float32)) == [True] * num_adders


def test_p_none_leaves_the_layer_default():
    # None goes to the layers as None, so each uses its own p field (1.0).
    assert _adder_ps("lenet5_bn", None) == [True] * 3


@pytest.mark.parametrize("adder", [True, False], ids=["adder", "cnn"])
def test_p_changes_adder_logits_without_recompiling(adder):
    model = models.LeNet5BN(
        num_classes=10, layer="adder" if adder else "conv", implementation="xla"
    )
    variables = _variables("lenet5_bn")
    if not adder:
        variables = _as_cnn(variables)
    x = _images((4,) + MNIST[1:], 1)  # BN over a batch of 2 maps every dense feature to +-1.
    traces = []

    @jax.jit
    def apply(variables, x, p):
        traces.append(None)  # Runs once per trace.
        # Train mode: batch statistics keep an untrained AdderNet's activations off zero.
        return model.apply(variables, x, train=True, p=p, mutable=["batch_stats"])[0]

    one, two = apply(variables, x, 1.0), apply(variables, x, 2.0)
    assert len(traces) == 1
    if adder:
        assert not np.allclose(one, two, atol=1e-3)
    else:
        np.testing.assert_array_equal(one, two)


# --------------------------------------------------------------------------- registry


# ----------------------------------------------------------------- the shift layer kinds


@pytest.mark.parametrize("name", ["lenet5_bn", "resnet20", "vgg_small", "resnet50"])
def test_shift_kinds_replace_each_weight_by_its_layers(name):
    """From the CNN's weights, written out: "shift" (DeepShift) has the latents "shift" and
    "sign" of each conv and dense weight's shape, the first and last layer included;
    "shiftadd" (ShiftAddNet) has them for the first and last layer, and every inner weight
    (kh, kw, cin, cout) becomes a shift layer of that shape then an adder of (kh, kw, cout,
    cout); the batch norms stay. A layer bias stays a bias."""
    cnn = _flat(_abstract(name, False)[0]["params"])
    outer = FULL_PRECISION[name]
    want_shift, want_shiftadd = {}, {}
    for key, shape in cnn.items():
        layer, leaf = key.rsplit("/", 1)
        if leaf != "kernel":
            want_shift[key] = want_shiftadd[key] = shape
            continue
        for latent in ("shift", "sign"):
            want_shift[f"{layer}/{latent}"] = shape
            if key in outer:
                want_shiftadd[f"{layer}/{latent}"] = shape
            else:
                want_shiftadd[f"{layer}/shift/{latent}"] = shape
        if key not in outer:
            want_shiftadd[f"{layer}/add/adder"] = (*shape[:-2], shape[-1], shape[-1])
    assert _flat(_abstract(name, None, "shift")[0]["params"]) == want_shift
    assert _flat(_abstract(name, None, "shiftadd")[0]["params"]) == want_shiftadd
    for layer in ("shift", "shiftadd"):
        variables, logits = _abstract(name, None, layer)
        assert logits.shape == (2, CASES[name][1])
        assert _flat(variables["batch_stats"]) == _flat(_abstract(name, False)[0]["batch_stats"])


def _exact_powers_of_two(weights):
    for path, w in weights.items():
        w = np.asarray(w)
        mantissa, _ = np.frexp(w[w != 0])
        assert np.all(np.abs(mantissa) == 0.5), path
    return len(weights)


@pytest.mark.parametrize("layer", ["shift", "shiftadd"])
def test_shift_models_apply_powers_of_two_and_train(layer):
    """Every shift layer's weight is 0 or +-2^k, exactly; a train step reaches every latent
    and adder filter, and the "shift" rng stream (the output gradient's quantisation)
    changes the gradient but not the loss."""
    from adderjax import shift

    model = models.get_model("lenet5_bn", num_classes=10, layer=layer, implementation="xla")
    x, labels = _images((4, 28, 28, 1), 1), np.array([3, 7, 0, 9])
    variables = model.init(jax.random.key(0), x, train=False)
    assert _exact_powers_of_two(shift.shift_weights(variables["params"])) == 5

    def loss(params, rngs):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"], rngs=rngs
        )
        return _cross_entropy(logits, labels)

    grad = jax.jit(jax.value_and_grad(loss))
    value, grads = grad(variables["params"], {"shift": jax.random.key(1)})
    plain_value, plain_grads = grad(variables["params"], None)
    assert value == plain_value
    for path, g in traverse_util.flatten_dict(grads, sep="/").items():
        assert np.all(np.isfinite(g)) and np.any(g != 0), path
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads), strict=True)
    )


def test_frozen_shift_layers_are_drawn_once_and_never_trained():
    """Their train_fix.py: PS latents drawn as integers in [-7, 0] and ternary signs, about half
    of them zero at threshold 0.5, and no gradient reaches them; the adder filters and
    batch norms still train."""
    from adderjax import shift

    options = shift.ShiftOptions(frozen=True)
    model = models.get_model("lenet5_bn", num_classes=10, layer="shiftadd", shift_options=options)
    x, labels = _images((4, 28, 28, 1), 1), np.array([3, 7, 0, 9])
    variables = model.init(jax.random.key(0), x, train=False)
    flat = traverse_util.flatten_dict(variables["params"], sep="/")
    shifts = np.concatenate([np.ravel(v) for k, v in flat.items() if k.endswith("/shift")])
    signs = np.concatenate([np.ravel(v) for k, v in flat.items() if k.endswith("/sign")])
    assert set(np.unique(shifts)) <= set(range(-7, 1)) and set(np.unique(signs)) == {-1, 0, 1}
    assert 0.45 < np.mean(signs == 0) < 0.55  # |U(-1, 1)| <= 0.5 has probability 1/2

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return _cross_entropy(logits, labels)

    grads = traverse_util.flatten_dict(jax.grad(loss)(variables["params"]), sep="/")
    for path, g in grads.items():
        frozen = path.endswith(("/shift", "/sign"))
        assert np.any(g != 0) != frozen, path


def test_a_bad_layer_kind_is_one_line():
    with pytest.raises(ValueError, match=r"^layer='mul' is not one of 'conv', 'adder', 'shift'"):
        models.get_model("resnet20", num_classes=10, layer="mul")
    with pytest.raises(ValueError, match=r"frozen=True needs kind='ps'"):
        models.get_model("resnet20", num_classes=10, shift_options=shift_options(kind="q"))


def shift_options(**kw):
    from adderjax.shift import ShiftOptions

    return ShiftOptions(frozen=True, **kw)


def test_registry():
    assert set(models.MODELS) == set(CASES)
    assert isinstance(models.get_model("resnet50", num_classes=5), models.ResNet)
    model = models.get_model("vgg_small", num_classes=100, layer="conv")
    assert isinstance(model, models.VGG) and model.num_classes == 100 and model.layer == "conv"
    with pytest.raises(ValueError, match="known models: lenet5_bn, resnet20, .*resnet50"):
        models.get_model("nope", num_classes=10)


def test_bad_stem():
    model = models.ResNet(num_classes=10, stage_sizes=(1,), block_cls=models.BasicBlock, stem="x")
    with pytest.raises(ValueError, match="stem"):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct(CIFAR, jnp.float32),
        )


def test_doctests():
    result = doctest.testmod(models)
    assert result.attempted > 0
    assert result.failed == 0
