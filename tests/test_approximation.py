"""The toy approximation experiments (benchmarks/approximation.py, the journal paper's
Section 5.1): the tasks of Eqs. 34-36, the two networks, and the program's outputs."""

import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import approximation  # noqa: E402  (benchmarks/approximation.py)


def test_tasks_follow_the_equations():
    x, z = approximation.make_task("ball", 2000, 0)
    r = np.linalg.norm(x, axis=1)
    assert not ((r > 10) & (r < 15)).any()  # the margin is empty
    np.testing.assert_array_equal(z, (r < 10).astype(np.float32))
    # N(0, 10^2): P(r < 10) = 1 - exp(-1/2) = 0.39 of all points, P(r > 15) = exp(-9/8) = 0.32.
    assert abs(z.sum() / 2000 - 0.393) < 0.04 and abs((1 - z).sum() / 2000 - 0.325) < 0.04

    x, z = approximation.make_task("two_balls", 500, 1)
    assert x.shape == (500, 2) and x.dtype == np.float32
    assert z[np.argmin(np.linalg.norm(x - 10, axis=1))] == 1
    assert z[np.argmin(np.linalg.norm(x + 10, axis=1))] == 1
    assert z[np.argmin(np.linalg.norm(x - np.array([10, -10]), axis=1))] == 0

    x, z = approximation.make_task("xy", 500, 2)
    np.testing.assert_array_equal(z, (x[:, 0] * x[:, 1] >= 0).astype(np.float32))
    with pytest.raises(ValueError, match="task must be one of ball, two_balls, xy, got 'disc'"):
        approximation.make_task("disc", 10, 0)


def test_adder_layer_is_the_normalised_negative_l1_distance():
    x = jnp.array([[0.0, 0.0], [1.0, 2.0], [-3.0, 1.0]])
    params = approximation.init("adder", 1, approximation.jax.random.key(0))
    params = dict(
        params, w1=jnp.array([[1.0], [-1.0]]), a1=jnp.array([[2.0]]), b1=jnp.array([[0.5]])
    )
    d = -np.array([2.0, 3.0, 6.0])  # -|x - (1, -1)|_1 by hand
    expected = 2.0 * (d - d.mean()) / np.sqrt(d.var() + approximation.EPS) + 0.5
    out = approximation.logits("adder", params, x, x)
    # Without a reference the statistics are the inputs' own: the same values.
    np.testing.assert_allclose(approximation.logits("adder", params, x), out, rtol=1e-6)
    h = np.maximum(expected, 0)[:, None]
    d2 = -np.abs(h - np.asarray(params["w2"])).sum(1)
    np.testing.assert_allclose(
        out, (d2 - d2.mean()) / np.sqrt(d2.var() + approximation.EPS), rtol=1e-5, atol=1e-5
    )


def test_one_adder_unit_classifies_the_ball_and_one_relu_unit_cannot():
    x, z = approximation.make_task("ball", 400, 0)
    _, adder = approximation.train("adder", 1, x, z, seeds=2, steps=400)
    _, fc = approximation.train("fc", 1, x, z, seeds=2, steps=400)
    assert adder.shape == (2,) and (np.asarray(adder) > 0.97).all()
    # One ReLU unit and a linear output give a half-plane boundary: the ring of negatives
    # around the disc is on both sides of it.
    assert (np.asarray(fc) < 0.9).all()


@pytest.mark.slow
def test_program_writes_results_and_figures(tmp_path):
    result = subprocess.run(
        [sys.executable, approximation.__file__, "--out", str(tmp_path), "--tasks", "ball",
         "--steps", "50", "--seeds", "2", "--points", "200", "--widths", "1,3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"ball"}
    for task, nets in results.items():
        assert set(nets) == {"fc", "adder"}
        for net in nets.values():
            assert set(net) == {"1", "3"}
            for cell in net.values():
                assert len(cell["per_seed"]) == 2 and cell["min"] <= cell["mean"] <= cell["max"]
        assert (tmp_path / f"{task}.png").stat().st_size > 10_000
    assert "| ball | 1 |" in result.stdout


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--tasks", "ball,moons", "--tasks must name some of ball, two_balls, xy, got ['moons']"),
        ("--widths", "1,0", "--widths must be positive integers separated by commas, got '1,0'"),
        ("--steps", "0", "--steps must be >= 1, got 0"),
    ],
)
def test_program_refuses_bad_arguments(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_info:
        approximation.parse(["--out", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_adder_rules_follow_the_papers():
    """alr rescales each adder filter's gradient to eta * sqrt(k); l2l1 moves p from 2 to 1."""
    grads = {"w1": jnp.full((2, 3), 5.0), "a1": jnp.full((1, 3), 5.0), "w2": jnp.ones((3, 1))}
    updates, _ = approximation.adaptive_lr(0.2).update(grads, None)
    for k in ("w1", "w2"):
        np.testing.assert_allclose(jnp.linalg.norm(updates[k]), 0.2 * np.sqrt(grads[k].size))
    np.testing.assert_array_equal(updates["a1"], grads["a1"])  # only the adder filters
    assert approximation.p_at(0.0, 100, "l2l1") == 2.0
    assert float(approximation.p_at(37.5, 100, "l2l1")) == 1.5
    assert float(approximation.p_at(90.0, 100, "l2l1")) == 1.0
    assert approximation.p_at(0.0, 100, "alr") == 1.0
    x, z = approximation.make_task("xy", 200, 0)
    runs = {
        rule: np.asarray(approximation.train("adder", 2, x, z, 1, 30, rule=rule)[0]["w1"])
        for rule in approximation.RULES
    }
    assert not np.allclose(runs["plain"], runs["alr"])
    assert not np.allclose(runs["alr"], runs["l2l1"])
    with pytest.raises(ValueError, match="rule must be one of plain, alr, l2l1, got 'sgd'"):
        approximation.train("adder", 1, x, z, 1, 2, rule="sgd")
