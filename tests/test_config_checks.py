"""Config validation: every mistake is one line naming the key, the value, the expectation."""

import ml_collections
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train import config_checks
from train.configs import (
    cifar10,
    cifar100,
    default,
    imagenet,
    mnist,
    pkkd_cifar,
    pkkd_imagenet,
    shiftadd_cifar10,
)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "resnet1000", "config.model='resnet1000' is invalid: expected one of"),
        ("dataset", "svhn", "config.dataset='svhn' is invalid"),
        ("num_epochs", -1, "config.num_epochs=-1 is invalid: expected an integer >= 1"),
        ("batch_size", 12, "config.batch_size=12 is invalid: expected a multiple of the device"),
        ("learning_rate", 0.0, "config.learning_rate=0.0 is invalid"),
        ("p_init", 3.0, "config.p_init=3.0 is invalid: expected a number in [1, 2]"),
        ("data_format", "idx", "config.data_format='idx' is invalid"),
        ("momentum", 1.0, "config.momentum=1.0 is invalid"),
        (
            "layer",
            "yes",
            "config.layer='yes' is invalid: expected one of 'conv', 'adder', 'shift', 'shiftadd'",
        ),
        ("fsdp_size", 3, "config.fsdp_size=3 is invalid: expected a divisor of the device count"),
        ("interpret", True, "config.interpret=True is invalid: expected False unless"),
        ("filter_grad", "exact", "config.filter_grad='exact' is invalid: expected one of"),
    ],
)
def test_bad_configs_are_one_line_errors(key, value, message):
    # Not type-safe, as a config written by hand in Python may be.
    config = ml_collections.ConfigDict(cifar10.get_config().to_dict(), type_safe=False)
    config[key] = value
    with pytest.raises(config_checks.ConfigError) as info:
        config_checks.validate(config, device_count=8)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shift_kind": "ps2"}, "config.shift_kind='ps2' is invalid: expected one of 'ps', 'q'"),
        ({"weight_bits": 1}, "config.weight_bits=1 is invalid: expected an integer >= 2"),
        ({"sign_threshold": -0.1}, "config.sign_threshold=-0.1 is invalid: expected None or"),
        (
            {"shift_kind": "q", "sign_threshold": 0.5},
            "config.sign_threshold=0.5 is invalid: expected None with shift_kind='q'",
        ),
        ({"shift_quant_bits": 2.5}, "config.shift_quant_bits=2.5 is invalid: expected an integer"),
        (
            {"shift_frozen": True},
            "config.shift_frozen=True is invalid: expected False with layer='adder'",
        ),
        (
            {"layer": "shiftadd", "shift_frozen": True, "shift_kind": "q"},
            "config.shift_frozen=True is invalid: expected False with shift_kind='q'",
        ),
        (
            {"layer": "shift", "shift_frozen": True, "shift_quant_bits": 0},
            "config.shift_quant_bits=0 is invalid: expected 2 or more with shift_frozen",
        ),
        ({"lr_schedule": "linear"}, "config.lr_schedule='linear' is invalid: expected one of"),
        ({"lr_schedule": "step"}, "config.lr_step_epochs='' is invalid: expected at least one"),
        ({"lr_step_epochs": "120,80"}, "config.lr_step_epochs='120,80' is invalid: expected"),
        ({"lr_step_epochs": "80,500"}, "config.lr_step_epochs='80,500' is invalid: expected"),
        ({"lr_step_epochs": "a"}, "config.lr_step_epochs='a' is invalid: expected"),
        ({"lr_step_factor": 2.0}, "config.lr_step_factor=2.0 is invalid: expected a number in"),
        (
            {"layer": "shiftadd", "distill": "pkkd"},
            "config.layer='shiftadd' is invalid: expected 'adder' with distill='pkkd'",
        ),
    ],
)
def test_bad_shift_and_schedule_keys_are_one_line_errors(changes, message):
    config = ml_collections.ConfigDict(cifar10.get_config().to_dict(), type_safe=False)
    config.update(changes)
    with pytest.raises(config_checks.ConfigError) as info:
        config_checks.validate(config, device_count=8)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_config_file_is_valid():
    for module in (default, mnist, cifar10, cifar100, imagenet, shiftadd_cifar10):
        config_checks.validate(module.get_config(), device_count=8)
    for arg in ("resnet20,cifar10", "resnet32,cifar100", "vgg_small,cifar10"):
        config = pkkd_cifar.get_config(arg)
        config_checks.validate(config, device_count=8)
        assert (config.model, config.dataset, config.distill) == (*arg.split(","), "pkkd")
    for arg in ("resnet18", "resnet50"):
        config_checks.validate(pkkd_imagenet.get_config(arg), device_count=8)


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.sampled_from(["resnet20", "cifar10", "tfds", "idx", "pallas", "lp", "bfloat16", "cifar"]),
    st.lists(st.integers(0, 3), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(default.get_config())), ANY_VALUE, max_size=3),
    device_count=st.integers(1, 16),
)
def test_random_configs_pass_or_fail_with_one_line(changes, device_count):
    config = ml_collections.ConfigDict(default.get_config().to_dict(), type_safe=False)
    config.update(changes)
    try:
        config_checks.validate(config, device_count=device_count)
    except config_checks.ConfigError as e:
        message = str(e)
        assert "\n" not in message and message.startswith("config")
        return
    # Accepted: every changed value is one the programs can run with.
    for key, value in changes.items():
        assert value is None or not isinstance(value, list), (key, value)
    assert config.batch_size % device_count == 0


def test_missing_keys_are_named():
    config = default.get_config()
    del config["eta"]
    with pytest.raises(config_checks.ConfigError, match="config is missing eta: start"):
        config_checks.validate(config, device_count=1)


def test_sign_filter_grad_needs_the_xla_path():
    config = cifar10.get_config()
    config.filter_grad, config.implementation = "sign", "pallas"
    with pytest.raises(config_checks.ConfigError, match="config.filter_grad='sign' is invalid"):
        config_checks.validate(config, device_count=1)
