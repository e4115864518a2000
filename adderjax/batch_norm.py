"""Batch normalisation as PyTorch's ``BatchNorm2d`` computes it, for the model zoo.

`flax.linen.BatchNorm` differs from it in two ways that matter for AdderNets and for
checkpoints converted from the reference: by default it computes the batch variance as
E[x^2] - E[x]^2, which loses float32 precision on adder outputs (a large mean, a small
spread), and it updates the running variance with the biased batch variance where PyTorch
uses the unbiased one, n / (n - 1) times larger. `BatchNorm` here is flax's module with
both changed: a variance that keeps float32 precision (computed around a shift, one pass),
unbiased running variance. Its variables (``scale``,
``bias``; ``mean``, ``var`` in ``batch_stats``) and arguments are flax's, so it is a drop-in.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn
from jax import lax

__all__ = ["BatchNorm"]


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm` with PyTorch's statistics (see the module docstring).

    In training (``use_running_average=False``) the output is normalised with the batch
    mean and the biased batch variance ``mean((x - mean)^2)`` (computed in one pass around
    a shift, as precise as two passes), and the running statistics
    become ``momentum * running + (1 - momentum) * batch`` with the batch variance scaled by
    ``n / (n - 1)``, n the number of values per feature (PyTorch's momentum 0.1 is flax's
    0.9). Only the last axis is the feature axis; ``axis_name`` and ``mask`` are not
    supported (under `jax.jit` over a mesh the batch statistics are already global).
    """

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        if self.axis not in (-1, x.ndim - 1) or self.axis_name is not None or mask is not None:
            raise ValueError(
                f"BatchNorm normalises the last axis without axis_name or mask, got "
                f"axis={self.axis}, axis_name={self.axis_name!r}, mask given: {mask is not None}"
            )
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = x.shape[-1]
        shape = (1,) * (x.ndim - 1) + (features,)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            stats_dtype = jnp.promote_types(self.dtype or jnp.result_type(x), jnp.float32)
            xs = jnp.asarray(x, stats_dtype)
            axes = tuple(range(x.ndim - 1))
            # One pass over shifted values: var = E[(x - k)^2] - E[x - k]^2 with k a value
            # of each feature (its first element), so |E[x - k]| is of the order of the
            # spread, not of the mean, and nothing cancels; the result is the two-pass
            # variance to float32 rounding, at the cost of one fused reduction.
            shift = lax.stop_gradient(xs[(0,) * (x.ndim - 1)])
            centred = xs - jnp.reshape(shift, shape)
            shifted_mean = jnp.mean(centred, axes)
            var = jnp.maximum(jnp.mean(jnp.square(centred), axes) - jnp.square(shifted_mean), 0)
            mean = shifted_mean + shift
            if not self.is_initializing():
                n = x.size // features
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean
                ra_var.value = m * ra_var.value + (1 - m) * var * (n / max(n - 1, 1))
        y = x - jnp.reshape(mean, shape)
        mul = lax.rsqrt(var + self.epsilon)
        args = [x]
        if self.use_scale:
            scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
            mul = mul * scale
            args.append(scale)
        y = y * jnp.reshape(mul, shape)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (features,), self.param_dtype)
            y = y + jnp.reshape(bias, shape)
            args.append(bias)
        return jnp.asarray(y, nn.dtypes.canonicalize_dtype(*args, dtype=self.dtype))
