"""`train.analyze`: the paper's analyses of a trained AdderNet / CNN pair."""

import json

import datafiles
import jax
import numpy as np
import pytest
from PIL import Image

from adderjax import models
from train import analyze, config_checks, model_state, saved_models, tasks, trainer
from train.configs import mnist
from train.data import sources


def _config(data_dir, **overrides):
    config = mnist.get_config()
    config.update(
        data_dir=str(data_dir),
        model="lenetpp",
        batch_size=16,
        eval_batch_size=8,
        num_train_steps=1,
        progress_bar=False,
        plots=False,
        **overrides,
    )
    return config


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A LeNet++ AdderNet and its CNN, one step each, on tiny idx files."""
    root = tmp_path_factory.mktemp("pair")
    data = datafiles.write_idx_dir(root / "data", num_train=32, num_test=24)
    for name, adder in (("adder", True), ("cnn", False)):
        trainer.run(
            _config(data, layer="adder" if adder else "conv"), root / name, tasks.classification
        )
    return root, data


@pytest.mark.slow
def test_analyses_of_a_trained_pair(pair, tmp_path):
    """One test for the pair (a module fixture would be built once per xdist worker)."""
    _check_gradient_norms_are_the_first_step_of_training(*pair)
    _check_report_figures_and_numbers(pair[0], tmp_path / "report")
    _check_one_sided_report_and_mixed_up_workdirs(pair[0], tmp_path)


def _check_gradient_norms_are_the_first_step_of_training(root, data):
    """The CNN's first SGD step is w1 = w0 - lr * (g + wd * w0): the gradient the analysis
    reports must be the g the trainer applied."""
    config = _config(data, layer="conv")
    config.worker_count = 0
    norms = analyze.first_iteration_gradient_norms(config)
    built = model_state.build(config, sources.DATASETS[config.dataset])
    w0 = analyze.layer_weights(jax.device_get(built.init(jax.random.key(0)).params))
    _, variables, _ = saved_models.load_model(str(root / "cnn"))
    w1 = analyze.layer_weights(jax.device_get(variables["params"]))
    assert sorted(norms) == ["conv1", "conv2", "fc1", "fc2", "fc3", "features"]
    lr, wd = config.learning_rate, config.weight_decay
    for layer, norm in norms.items():
        g = (np.asarray(w0[layer]) - np.asarray(w1[layer])) / lr - wd * np.asarray(w0[layer])
        assert norm == pytest.approx(np.linalg.norm(g), rel=1e-3), layer
        assert norm > 0


def _check_report_figures_and_numbers(root, tmp_path):
    report = analyze.analyze(str(root / "adder"), str(root / "cnn"), str(tmp_path), num_points=20)
    text = report.read_text()
    for heading in ("Table 1", "Figure 5", "Figure 7", "Figure 1"):
        assert heading in text
    for row in ("| conv1 |", "| conv2 (adder) |", "| features (adder) |", "| fc3 |"):
        assert row in text
    assert "| adder filters | 2,400 |" in text and "| conv filters | 2,400 |" in text
    for png in ("filters.png", "weights.png", "features.png"):
        with Image.open(tmp_path / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    numbers = json.loads((tmp_path / "analysis.json").read_text())
    assert set(numbers) == {"AdderNet", "CNN", "weight_fits"}
    for side in ("AdderNet", "CNN"):
        sep = numbers[side]["separation"]
        assert 0 <= sep["nearest_angle"] <= 1 and 0 <= sep["nearest_l1_centre"] <= 1
        assert all(np.isfinite(v) and v > 0 for v in numbers[side]["grad_norms"].values())


def _check_one_sided_report_and_mixed_up_workdirs(root, tmp_path):
    report = analyze.analyze(str(root / "adder"), None, str(tmp_path / "one"), num_points=8)
    assert "| layer | AdderNet |" in report.read_text()
    with pytest.raises(
        config_checks.ConfigError,
        match="--workdir=.*cnn holds a layer='conv' run, not layer='adder'",
    ):
        analyze.analyze(str(root / "cnn"), None, str(tmp_path / "two"))
    with pytest.raises(config_checks.ConfigError, match="give --workdir"):
        analyze.analyze(None, None)


def test_feature_separation_tells_angles_from_l1_centres():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 200)
    # Rays 15 degrees apart: each class one direction, any length. Split by angle only.
    angles = np.radians(15.0 * labels) + 0.01 * rng.normal(size=600)
    directions = np.stack([np.cos(angles), np.sin(angles), np.zeros(600)], axis=1)
    rays = directions * rng.uniform(0.1, 20, size=(600, 1))
    # Blobs on one line through the origin: one angle, three l1 centres.
    blobs = (1 + 3 * labels)[:, None] * np.ones((600, 3)) + 0.1 * rng.normal(size=(600, 3))
    r, b = analyze.feature_separation(rays, labels), analyze.feature_separation(blobs, labels)
    assert r["nearest_angle"] > 0.99 and r["nearest_l1_centre"] < 0.8
    assert b["nearest_l1_centre"] > 0.99 and b["nearest_angle"] < 0.5


def test_first_layers_are_the_first_conv_and_the_first_adder_conv():
    model = models.get_model("resnet20", num_classes=10)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]
    assert analyze.first_layers(params) == ["conv1", "layer1_0/conv1"]
    cnn = models.get_model("resnet20", num_classes=10, layer="conv")
    cnn_params = jax.eval_shape(lambda x: cnn.init(jax.random.key(0), x, train=False), x)
    assert analyze.first_layers(cnn_params["params"]) == ["conv1"]
