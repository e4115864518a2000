"""benchmarks/kernels.py: refuses to time without a GPU, and its roofline is the kernels' own."""

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
