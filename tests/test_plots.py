"""Tests for train/plots.py: training curves and the weight-histogram figure."""

import struct

import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest
from flax.core import freeze

from train import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """Checks `path` is a non-trivial PNG and returns its (width, height) from the IHDR."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1024
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def history(steps=100, eval_every=25):
    records = []
    for step in range(1, steps + 1):
        records.append(
            {
                "step": step,
                "split": "train",
                "time": 0.0,
                "loss": 2.3 / step**0.5,
                "accuracy": 1 - 1 / step**0.5,
                "learning_rate": 0.1 * (1 - step / steps),
                "p": 2.0 - step / steps,
            }
        )
        if step % eval_every == 0:
            records.append(
                {"step": step, "split": "eval", "time": 0.0, "accuracy": step / steps * 0.9}
            )
    return records


def test_plot_curves_all_panels(tmp_path):
    metrics = history()
    metrics[10]["loss"] = None  # a diverged step logged as null
    metrics.append({"step": 100, "split": "eval", "time": 0.0, "top5_accuracy": 0.99})
    path = tmp_path / "sub" / "curves.png"
    plots.plot_curves(metrics, path)
    # loss, accuracy, learning rate, p: four 450-px panels side by side.
    assert png_size(path)[0] == 4 * 450


@pytest.mark.parametrize(
    "metrics, panels",
    [
        ([{"step": 5, "split": "train", "time": 0.0, "loss": 1.0}], 1),  # a single point
        ([{"step": 5, "split": "eval", "time": 0.0, "accuracy": 0.5}], 1),  # no train at all
        ([{"step": 5, "split": "train", "time": 0.0, "loss": None}], 1),  # only nulls
        ([], 1),
    ],
)
def test_plot_curves_sparse(tmp_path, metrics, panels):
    path = tmp_path / "curves.png"
    plots.plot_curves(metrics, path)
    assert png_size(path)[0] == panels * 450


def test_compare_curves(tmp_path):
    path = tmp_path / "fig6.png"
    plots.compare_curves({"v1": history(40, 10), "v2": history(40, 20)}, path, "v1 and v2")
    assert png_size(path) == (950, 360)
    # One run without eval records and one with nothing still draws (the panel says so).
    train_only = [r for r in history(10, 5) if r["split"] == "train"]
    plots.compare_curves({"a": train_only, "b": []}, tmp_path / "sparse.png")
    assert png_size(tmp_path / "sparse.png") == (950, 360)


def test_global_matplotlib_state_untouched(tmp_path):
    backend = matplotlib.get_backend()
    rc = dict(matplotlib.rcParams)
    plots.plot_curves(history(10, 5), tmp_path / "curves.png")
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == rc


@pytest.mark.parametrize("dist", ["laplace", "gaussian"])
def test_fit_recovers_parameters(dist):
    rng = np.random.default_rng(0)
    loc, scale, n = 0.1, 0.05, 200_000
    if dist == "laplace":
        x = rng.laplace(loc, scale, n)
    else:
        x = rng.normal(loc, scale, n)
    fit = plots.fit_weight_distributions(x)
    assert fit["n"] == n
    assert fit["better"] == dist
    if dist == "laplace":
        assert fit["laplace"]["loc"] == pytest.approx(loc, abs=0.01 * scale)
        assert fit["laplace"]["scale"] == pytest.approx(scale, rel=0.01)
        assert fit["laplace"]["loglik"] > fit["gaussian"]["loglik"]
        # The maximized mean log-likelihood of a Laplace fit is -log(2b) - 1.
        assert fit["laplace"]["loglik"] == pytest.approx(-np.log(2 * scale) - 1, abs=0.02)
    else:
        assert fit["gaussian"]["mean"] == pytest.approx(loc, abs=0.01 * scale)
        assert fit["gaussian"]["std"] == pytest.approx(scale, rel=0.01)
        assert fit["gaussian"]["loglik"] > fit["laplace"]["loglik"]
        expected = -0.5 * np.log(2 * np.pi * scale**2) - 0.5
        assert fit["gaussian"]["loglik"] == pytest.approx(expected, abs=0.02)


def test_fit_rejects_too_few_values():
    with pytest.raises(ValueError, match="x.size=1"):
        plots.fit_weight_distributions(np.ones(1))


def model_params(filters: str, sample, shortcut=7.0):
    """A hand-made ResNet-like tree: full-precision conv1 and fc, `filters` in between."""
    return {
        "conv1": {"kernel": np.full((3, 3, 3, 4), 100.0, np.float32)},
        "bn1": {"scale": np.ones(4), "bias": np.zeros(4)},
        "layer1": {
            "block0": {
                "conv_a": {filters: sample((3, 3, 4, 4))},
                "bn_a": {"scale": np.ones(4), "bias": np.zeros(4)},
            },
            "block1": {"conv_a": {filters: jnp.asarray(sample((3, 3, 4, 8)))}},
            "shortcut": {"kernel": np.full((1, 1, 4, 8), shortcut, np.float32)},
        },
        "dense": {"adder": np.full((4, 2), -3.0, np.float32)},  # 2-D: not a conv filter
        "fc": {"kernel": np.full((1, 1, 8, 10), -100.0, np.float32)},
    }


def test_weight_histograms_exclusion():
    rng = np.random.default_rng(0)
    params = model_params("adder", lambda shape: rng.normal(size=shape))
    adder = params["layer1"]
    expected_adder = np.concatenate(
        [
            adder["block0"]["conv_a"]["adder"].ravel(),
            np.asarray(adder["block1"]["conv_a"]["adder"]).ravel(),
        ]
    )
    # A variables dict and a FrozenDict work like the bare params.
    for tree in (params, {"params": params, "batch_stats": {}}, freeze(params)):
        groups = plots.weight_histograms(tree)
        assert set(groups) == {"adder", "kernel"}
        np.testing.assert_allclose(groups["adder"], expected_adder, rtol=1e-6)
        # conv1 (100) and fc (-100) are excluded; only the full-precision shortcut is left.
        np.testing.assert_array_equal(groups["kernel"], np.full(32, 7.0))
        assert groups["adder"].dtype == groups["kernel"].dtype == np.float32

    everything = plots.weight_histograms(params, exclude=())
    assert sorted(set(everything["kernel"].tolist())) == [-100.0, 7.0, 100.0]
    assert everything["kernel"].size == 108 + 32 + 80
    only_fc = plots.weight_histograms(params, exclude=["fc", "layer1"])
    assert only_fc["adder"].size == 0
    assert sorted(set(only_fc["kernel"].tolist())) == [100.0]


def test_plot_weight_histograms(tmp_path):
    rng = np.random.default_rng(1)
    n = 64 * 64 * 9  # enough weights for the fits to tell the two laws apart
    adder_params = model_params("adder", lambda s: rng.laplace(0.0, 0.02, (3, 3, 64, 64)))
    cnn_params = model_params(
        "kernel", lambda s: rng.normal(0.0, 0.02, (3, 3, 64, 64)), shortcut=0.01
    )

    path = tmp_path / "hist.png"
    fits = plots.plot_weight_histograms(adder_params, cnn_params, path=path)
    assert png_size(path)[0] == 2 * 550
    assert set(fits) == {"adder", "cnn"}
    assert fits["adder"]["n"] == 2 * n and fits["adder"]["better"] == "laplace"
    # The CNN panel holds its conv filters plus the full-precision 1x1 shortcut.
    assert fits["cnn"]["n"] == 2 * n + 32 and fits["cnn"]["better"] == "gaussian"
    assert fits["adder"]["laplace"]["scale"] == pytest.approx(0.02, rel=0.05)

    one = plots.plot_weight_histograms(adder_params=adder_params, path=tmp_path / "one.png")
    assert set(one) == {"adder"}
    assert one["adder"] == fits["adder"]
    assert png_size(tmp_path / "one.png")[0] == 550


def test_plot_weight_histograms_errors(tmp_path):
    rng = np.random.default_rng(2)
    cnn_params = model_params("kernel", lambda s: rng.normal(size=s))
    with pytest.raises(ValueError, match="adder_params, cnn_params or both"):
        plots.plot_weight_histograms(path=tmp_path / "x.png")
    # A CNN passed as the AdderNet has no adder filters: an error, not an empty panel.
    with pytest.raises(ValueError, match="no 4-D 'adder' leaves"):
        plots.plot_weight_histograms(cnn_params, path=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
