"""Strict test settings shared by the whole suite (as in equinox's tests/conftest.py)."""

import os
import tempfile

import jax

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

    pytest-xdist hands tests out in collection order; with the minute-long program and
    multi-process tests last (test_programs.py sorts late), one worker finished them while
    the other sat idle. Whole modules move, so module-scoped fixtures are still built once
    per worker. ``-m "not slow"`` leaves the slow tests out for a quick run.
    """
    del config
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
