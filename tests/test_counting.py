"""count_ops against counts worked out by hand, and the paper's conventions."""

import doctest

import pytest
from flax import linen as nn

from adderjax import count_ops, counting, models
from adderjax import nn as adder_nn

CIFAR = (1, 32, 32, 3)


def _resnet20_cnn_paper_macs():
    # 3x3 convs: K = 9 * Cin, outputs = H * W * Cout; 1x1 shortcuts K = Cin.
    stage1 = 6 * (9 * 16) * (32 * 32 * 16)
    stage2 = (9 * 16) * (16 * 16 * 32) + 5 * (9 * 32) * (16 * 16 * 32) + 16 * (16 * 16 * 32)
    stage3 = (9 * 32) * (8 * 8 * 64) + 5 * (9 * 64) * (8 * 8 * 64) + 32 * (8 * 8 * 64)
    return stage1 + stage2 + stage3  # the first conv and the fc left out


def test_resnet20_paper_convention_by_hand():
    macs = _resnet20_cnn_paper_macs()
    cnn = count_ops(models.ResNet20(num_classes=10, layer="conv"), CIFAR, train=False)
    assert (cnn.multiplications, cnn.additions) == (macs, macs) == (40_370_176, 40_370_176)
    adder = count_ops(models.ResNet20(num_classes=10), CIFAR, train=False)
    assert (adder.multiplications, adder.additions) == (0, 2 * macs)
    assert len(adder.layers) == 20 - 2 + 2  # 18 3x3 adders + 2 shortcuts
    names = [layer.name for layer in adder.layers]
    assert "conv1" not in names and "fc" not in names
    assert "layer2_0/downsample_0" in names


def test_lenet_full_convention_by_hand():
    count = count_ops(
        models.LeNet5BN(num_classes=10), (1, 28, 28, 1), convention="full", train=False
    )
    # conv1 25 x 4704 (mul), conv2 adder 150 x 1600, fc1 adder 400 x 120, fc2 adder 120 x 84,
    # fc3 84 x 10 with bias; BN: one mul and one add per element (4704, 1600, 120, 84).
    bn = 4704 + 1600 + 120 + 84
    mul = 25 * 4704 + 84 * 10 + bn
    add = (
        24 * 4704 + (150 + 149) * 1600 + (400 + 399) * 120 + (120 + 119) * 84 + (83 * 10 + 10) + bn
    )
    assert (count.multiplications, count.additions) == (mul, add)
    assert [layer.kind for layer in count.layers].count("batchnorm") == 4


@pytest.mark.parametrize(
    "name, shape, classes",
    [("resnet32", CIFAR, 10), ("vgg_small", CIFAR, 10), ("resnet50", (1, 224, 224, 3), 1000)],
)
def test_adder_does_twice_the_additions_and_no_multiplications(name, shape, classes):
    cnn = count_ops(models.get_model(name, num_classes=classes, layer="conv"), shape, train=False)
    adder = count_ops(models.get_model(name, num_classes=classes), shape, train=False)
    assert adder.multiplications == 0 and adder.additions == 2 * cnn.multiplications
    assert cnn.additions == cnn.multiplications > 0


def test_energy():
    count = count_ops(models.ResNet20(num_classes=10, layer="conv"), CIFAR, train=False)
    assert count.energy_pj == pytest.approx(count.multiplications * 4.6)
    int32 = count_ops(models.ResNet20(num_classes=10), CIFAR, energy="int32", train=False)
    assert int32.energy_pj == pytest.approx(int32.additions * 0.1)
    mine = count_ops(
        models.ResNet20(num_classes=10), CIFAR, energy={"add": 1, "mul": 10}, train=False
    )
    assert mine.energy_pj == mine.additions
    assert "| total |" in mine.table()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(convention="macs"), "convention must be one of"),
        (dict(energy="fp8"), "energy must be one of"),
        (dict(energy={"add": -1, "mul": 1}), "energy must map"),
        (dict(input_shape=(1, 0, 32, 3)), "input_shape must be positive ints"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(input_shape=CIFAR)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        count_ops(models.ResNet20(num_classes=10), train=False, **args)


def test_doctests():
    assert doctest.testmod(counting).failed == 0


class _ShiftAddBlock(nn.Module):
    """ShiftAddNet's unit (a shift conv, then an adder conv) between a stem and a head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)  # first layer: left out by "paper"
        x = adder_nn.ShiftConv(features=16, kernel_size=3)(x)
        x = adder_nn.AdderConv(features=16, kernel_size=3, use_bias=False)(x)
        return adder_nn.ShiftDense(features=10)(x.reshape(x.shape[0], -1))  # last: left out


def test_shift_layers_count_shifts_and_additions_by_hand():
    paper = count_ops(_ShiftAddBlock(), (1, 8, 8, 3), energy="shiftaddnas_32bit")
    outputs, k = 8 * 8 * 16, 9 * 8
    shift, adder = paper.layers
    assert (shift.kind, shift.shifts, shift.additions, shift.multiplications) == (
        "shift", outputs * k, outputs * k, 0
    )  # fmt: skip
    assert (adder.kind, adder.additions, adder.shifts) == ("adder", 2 * outputs * 9 * 16, 0)
    assert paper.multiplications == 0 and paper.shifts == outputs * k
    assert "| shift |" in paper.table().splitlines()[0]
    full = count_ops(_ShiftAddBlock(), (1, 8, 8, 3), convention="full", energy="shiftaddnas_8bit")
    head = full.layers[-1]
    assert (head.kind, head.shifts, head.additions) == ("shift_dense", 10 * 1024, 10 * 1023)
    e = counting.ENERGY_PJ["shiftaddnas_8bit"]
    want = full.multiplications * e["mul"] + full.additions * e["add"] + full.shifts * e["shift"]
    assert full.energy_pj == pytest.approx(want)
    with pytest.raises(ValueError, match="has shift layers but energy='float32' has no shift"):
        count_ops(_ShiftAddBlock(), (1, 8, 8, 3))  # "paper" with the default float32 figures


def test_shift_networks_of_the_zoo():
    """ResNet-20 as ShiftAddNet: each inner conv of the CNN becomes a shift conv of its shape
    (its multiplications become shifts, its accumulations stay) followed by an adder conv of
    the output width (2 additions a term); as DeepShift every conv, stem and classifier
    included, is a shift conv, so only BatchNorm multiplies."""
    cnn = count_ops(models.ResNet20(num_classes=10, layer="conv"), CIFAR, train=False)
    shiftadd = count_ops(
        models.ResNet20(num_classes=10, layer="shiftadd"),
        CIFAR,
        train=False,
        energy="shiftaddnas_32bit",
    )
    assert shiftadd.multiplications == 0 and shiftadd.shifts == cnn.multiplications
    shifts = [c for c in shiftadd.layers if c.kind == "shift"]
    adders = [c for c in shiftadd.layers if c.kind == "adder"]
    assert [c.name for c in shiftadd.layers] == [
        n for a, b in zip(shifts, adders, strict=True) for n in (a.name, b.name)
    ]
    assert all(c.name.endswith("/shift") for c in shifts)
    assert all(c.name.endswith("/add") for c in adders)
    assert sum(c.additions for c in shifts) == cnn.additions
    for shift_layer, adder in zip(shifts, adders, strict=True):
        # The adder keeps the shift conv's output size, its kernel, and reads its width.
        kernel = 9 if shift_layer.reduction % 9 == 0 and "downsample" not in adder.name else 1
        width = adder.reduction // kernel
        assert adder.outputs == shift_layer.outputs and adder.outputs % width == 0
        assert adder.additions == 2 * adder.outputs * adder.reduction
    deepshift = count_ops(
        models.ResNet20(num_classes=10, layer="shift"),
        CIFAR,
        convention="full",
        energy="shiftaddnas_8bit",
        train=False,
    )
    bn = sum(c.multiplications for c in deepshift.layers if c.kind == "batchnorm")
    assert deepshift.multiplications == bn > 0
    assert {c.kind for c in deepshift.layers} == {"shift", "batchnorm"}
