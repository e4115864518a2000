"""Strict test settings shared by the whole suite (as in equinox's tests/conftest.py)."""

import os
import tempfile

# The suite's time is mostly XLA compiling small programs, and most of a CPU compilation is
# LLVM optimising the generated code: at -O0 four modules took 42 s of CPU instead of 68 s
# (docs/testing.md). HLO optimisations (fusion, layout, algebraic simplification) still run,
# XLA:CPU uses no fast-math at either level, and the suite passes at both. Subprocesses get
# the flag through the environment; the tests that set XLA_FLAGS for them start from
# XLA_FLAGS here.
XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip()

import jax  # noqa: E402  (after XLA_FLAGS, which the backend reads when it starts)

# Implicit rank promotion hides shape bugs; every test runs with it turned into an error.
jax.config.update("jax_numpy_rank_promotion", "raise")

# The trainer tests build the same models again and again (a run, then its resume); XLA's
# persistent cache turns the second compilation into a disk read (13 s -> 4 s a run). The
# cache is keyed by the program and the jax version, so a stale entry cannot be hit.
CACHE_DIR = os.path.join(tempfile.gettempdir(), f"adderjax-tests-jax-cache-{os.getuid()}")
jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first, each module's tests kept together and in order.

    With ``--dist=loadscope`` (pyproject.toml) pytest-xdist hands whole modules to the
    workers in collection order; the minute-long modules first and the many short ones after
    fill both workers to the end, where in alphabetical order test_programs.py came last and
    one worker ran it alone. ``-m "not slow"`` leaves the slow tests out for a quick run.
    """
    del config
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
