"""Strict test settings shared by the whole suite (as in equinox's tests/conftest.py)."""

import jax

# Implicit rank promotion hides shape bugs; every test runs with it turned into an error.
jax.config.update("jax_numpy_rank_promotion", "raise")
