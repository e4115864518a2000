"""The benchmark scripts: kernels.py refuses to time without a GPU and its roofline is the
kernels' own; scaling.py runs its table end to end."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

import kernels.adder_triton

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args):
    return subprocess.run(
        [sys.executable, str(BENCH / "kernels.py"), *args], capture_output=True, text=True
    )


def test_without_a_gpu_it_says_so_and_exits():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: the benchmark would run")
    result = _run("--only", "resnet20")
    assert result.returncode == 1
    assert "needs a GPU" in result.stderr and result.stdout == ""


def test_roofline_table_matches_the_kernel_docstring():
    result = _run("--roofline")
    assert result.returncode == 0, result.stderr
    printed = {
        row[0]: row[1:]
        for row in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in result.stdout.splitlines()
            if line.startswith("| r")
        )
    }
    assert len(printed) == 14
    doc = kernels.adder_triton.__doc__
    for name, (terms, fwd, _, dx, _, dw, _, total) in printed.items():
        row = re.search(
            re.escape(name) + r"\s+([\d.]+)\s+(\d+) \w+\.\s+(\d+) \w+\.\s+(\d+) \w+\.\s+(\d+)", doc
        )
        assert row is not None, name
        assert row.groups() == (terms, fwd, dx, dw, total), name


def test_scaling_prints_a_row_per_device_count():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "scaling.py"),
            "--model=lenet5_bn",
            "--per-device-batch=2",
            "--steps=1",
            "--warmup=0",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCH.parent,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in result.stdout.splitlines() if re.match(r"\| \d", ln)]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8]
    assert [int(r[1]) for r in rows] == [2, 4, 8, 16]  # weak scaling: 2 images per device
    assert all(float(r[3]) > 0 for r in rows)
    assert float(rows[0][4]) == 1.0
