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
