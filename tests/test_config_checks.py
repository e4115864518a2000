"""Config validation: every mistake is one line naming the key, the value, the expectation."""

import ml_collections
import pytest

from train import config_checks
from train.configs import cifar10, cifar100, default, imagenet, mnist


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
        ("adder", "yes", "config.adder='yes' is invalid: expected True or False"),
        ("fsdp_size", 3, "config.fsdp_size=3 is invalid: expected a divisor of the device count"),
        ("interpret", True, "config.interpret=True is invalid: expected False unless"),
    ],
)
def test_bad_configs_are_one_line_errors(key, value, message):
    # Not type-safe, as a config written by hand in Python may be.
    config = ml_collections.ConfigDict(cifar10.get_config().to_dict(), type_safe=False)
    config[key] = value
    with pytest.raises(config_checks.ConfigError) as info:
        config_checks.validate(config, device_count=8)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_every_config_file_is_valid():
    for module in (default, mnist, cifar10, cifar100, imagenet):
        config_checks.validate(module.get_config(), device_count=8)
