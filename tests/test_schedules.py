"""The learning-rate and l_p schedules (the trainer test checks p reaches the step)."""

import pytest

from train import schedules
from train.configs import default


def test_p_schedule_values():
    config = default.get_config()
    config.p_init, config.p_final, config.p_decay_epochs = 2.0, 1.0, 100
    got = [schedules.p_at_epoch(config, e) for e in (0, 1, 50, 99, 100, 399)]
    assert got == [2.0, 1.99, 1.5, 1.01, 1.0, 1.0]
    assert schedules.p_at_step(config, 3 * 196 + 5, 196) == pytest.approx(1.97)
    config.p_decay_epochs = 0  # the CVPR AdderNet: p_final throughout
    config.p_final = 1.0
    assert {schedules.p_at_epoch(config, e) for e in range(5)} == {1.0}


def test_learning_rate_schedule():
    config = default.get_config()
    config.num_epochs, config.learning_rate, config.warmup_epochs = 4, 0.1, 1
    lr = schedules.learning_rate(config, steps_per_epoch=10)
    assert float(lr(0)) == 0.0
    assert float(lr(10)) == pytest.approx(0.1)
    assert float(lr(25)) == pytest.approx(0.05, rel=1e-5)
    assert float(lr(40)) == pytest.approx(0.0, abs=1e-8)


def test_step_schedule_is_multisteplr():
    """ShiftAddNet's recipe: 0.1, x0.1 from epoch 80 and again from 120 (PyTorch's
    MultiStepLR), also after a warmup."""
    config = default.get_config()
    config.num_epochs, config.learning_rate = 160, 0.1
    config.lr_schedule, config.lr_step_epochs, config.lr_step_factor = "step", "80,120", 0.1
    lr = schedules.learning_rate(config, steps_per_epoch=10)
    got = [float(lr(s)) for s in (0, 799, 800, 1199, 1200, 1599)]
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    config.warmup_epochs = 2
    lr = schedules.learning_rate(config, steps_per_epoch=10)
    assert [float(lr(s)) for s in (10, 20, 799, 800)] == pytest.approx([0.05, 0.1, 0.1, 0.01])
    assert schedules.step_epochs(config) == [80, 120]
