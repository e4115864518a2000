"""Optax transformations for training AdderNets.

AdderNet filter gradients are much smaller than those of multiplication layers
and differ in size from layer to layer, so the paper rescales each adder
layer's gradient to a fixed norm (the adaptive learning rate of section 3.3)
before an ordinary SGD step. This module provides that rescaling as an optax
transformation, a mask that picks out the adder filters of Flax linen and NNX
parameter trees, and the full optimizer used in the reference implementation.

References:
    Chen et al., `AdderNet: Do We Really Need Multiplications in Deep Learning?
    <https://arxiv.org/abs/1912.13200>`_, CVPR 2020.

    Chen et al., `Universal Adder Neural Networks
    <https://arxiv.org/abs/2105.14202>`_, 2021 (journal version).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax.core import meta

__all__ = [
    "InvalidArgumentError",
    "add_decayed_weights",
    "adder_mask",
    "adder_sgd",
    "check_sgd_arguments",
    "decay_mask",
    "scale_by_adaptive_lr",
]

# The attribute / dict key under which the adder layers (linen and NNX) store their filter.
_ADDER_NAME = "adder"
# DeepShift-PS's latents (`adderjax.shift.LATENTS["ps"]`), trained without weight decay.
_NO_DECAY_NAMES = ("shift", "sign")


def _is_box(x: Any) -> bool:
    # NNX Variables and linen metadata boxes (nn.Partitioned, ...) wrap the array
    # in a `.value` attribute; the parameter's name is the key of the box itself,
    # not the trailing `.value` that tree paths would otherwise end with.
    return isinstance(x, (nnx.Variable, meta.AxisMetadata))


def _key_name(key: Any) -> Any:
    if isinstance(key, jax.tree_util.DictKey):
        return key.key
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    # Sequence positions (SequenceKey) and flattened indices are not names.
    return None


def adder_mask(params: Any) -> Any:
    """Marks the adder-layer filters of a parameter tree.

    A leaf is marked when the last entry of its path is a dict key or attribute
    named ``adder``, the name the adder layers give their filter (shape
    ``(kh, kw, cin, cout)`` for convolutions, ``(din, dout)`` for dense layers).
    NNX ``Variable`` and linen metadata boxes are looked through: the name is that
    of the box, and the box is kept in the returned tree.

    Args:
        params: a parameter (or gradient) tree: a linen ``variables`` dict (with or
            without the ``'params'`` level), an ``nnx.State`` from ``nnx.split`` or
            ``nnx.state``, or its pure form from ``nnx.as_pure``. ``None`` and
            ``optax.MaskedNode`` entries are kept as they are.

    Returns:
        A tree with the structure of ``params`` whose leaves are Python bools, True
        exactly for the adder filters. It can be passed as the ``mask`` of
        ``optax.masked`` and similar wrappers.

    Example:
        >>> import jax.numpy as jnp
        >>> from adderjax import optim
        >>> params = {'params': {
        ...     'AdderConv_0': {'adder': jnp.ones((3, 3, 2, 4)), 'bias': jnp.zeros(4)},
        ...     'BatchNorm_0': {'bias': jnp.zeros(4), 'scale': jnp.ones(4)}}}
        >>> mask = optim.adder_mask(params)
        >>> mask['params']['AdderConv_0']
        {'adder': True, 'bias': False}
        >>> mask['params']['BatchNorm_0']
        {'bias': False, 'scale': False}

    References:
        Chen et al., `AdderNet: Do We Really Need Multiplications in Deep Learning?
        <https://arxiv.org/abs/1912.13200>`_, CVPR 2020.
    """

    return _mark_names(params, lambda name: name == _ADDER_NAME)


def _mark_names(params: Any, test) -> Any:
    """`params` with each leaf replaced by ``test(name)`` of its parameter's name (False for
    unnamed leaves), boxes looked through as `adder_mask` does."""

    def mark(path, leaf):
        name = _key_name(path[-1]) if path else None
        marked = isinstance(name, str) and test(name)
        if _is_box(leaf):
            return jax.tree.map(lambda _: marked, leaf)
        return marked

    return jax.tree_util.tree_map_with_path(mark, params, is_leaf=_is_box)


def decay_mask(params: Any) -> Any:
    """Marks the parameters that get weight decay: all but DeepShift-PS's shift and sign
    latents (leaves named ``shift`` and ``sign``), which ShiftAddNet's ``train.py`` (lines
    232-246) puts in parameter groups of weight decay 0. A tree of Python bools like
    `adder_mask`'s, for ``optax.add_decayed_weights(mask=...)``.

    Example:
        >>> import jax.numpy as jnp
        >>> from adderjax import optim
        >>> optim.decay_mask({'shift': jnp.zeros(2), 'sign': jnp.zeros(2), 'adder': jnp.zeros(2)})
        {'adder': True, 'shift': False, 'sign': False}
    """
    return _mark_names(params, lambda name: name not in _NO_DECAY_NAMES)


def add_decayed_weights(weight_decay: Any) -> optax.GradientTransformation:
    """``optax.add_decayed_weights(weight_decay)`` on the leaves `decay_mask` marks: ``g + wd *
    p`` for them, ``g`` for DeepShift-PS's latents. Its state is optax's unmasked one
    (``EmptyState``), so checkpoints of models without shift layers keep their layout.

    Example:
        >>> import jax.numpy as jnp
        >>> from adderjax import optim
        >>> params = {'sign': jnp.ones(2), 'kernel': jnp.ones(2)}
        >>> tx = optim.add_decayed_weights(0.5)
        >>> updates, _ = tx.update(params, tx.init(params), params)
        >>> print(updates['kernel'], updates['sign'])
        [1.5 1.5] [1. 1.]
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "add_decayed_weights needs params: call update(updates, state, params)"
            )
        leaves, treedef = jax.tree.flatten(updates)
        marks = jax.tree.leaves(decay_mask(updates))
        decayed = [
            g + weight_decay * p if m else g
            for g, p, m in zip(leaves, treedef.flatten_up_to(params), marks, strict=True)
        ]
        return jax.tree.unflatten(treedef, decayed), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


class InvalidArgumentError(ValueError):
    """An optimizer argument out of its range; `name`, `value` and `expected` say which."""

    def __init__(self, name: str, value: Any, expected: str, message: str | None = None):
        self.name, self.value, self.expected = name, value, expected
        if message is None:
            if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) > 0:
                got = f"an array of shape {np.shape(value)}"
            else:
                got = repr(value)
            message = f"{name} must be {expected}, got {got}"
        super().__init__(message)


def _invalid(name: str, value: Any, expected: str) -> InvalidArgumentError:
    return InvalidArgumentError(name, value, expected)


def _concrete_float(name: str, value: Any, expected: str) -> float | None:
    """Returns ``value`` as a float, or None when it is traced and cannot be checked."""
    if isinstance(value, jax.core.Tracer):
        return None
    is_real_scalar = isinstance(value, numbers.Real) or (
        isinstance(value, (np.ndarray, np.generic, jax.Array))
        and np.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.number)
        and not jnp.issubdtype(value.dtype, jnp.complexfloating)
    )
    # bool is a numbers.Real, but True as a learning rate is a bug, not 1.0.
    if isinstance(value, (bool, np.bool_)) or not is_real_scalar:
        raise _invalid(name, value, expected)
    return float(value)


def _check_positive(name: str, value: Any) -> None:
    expected = "a positive finite number"
    v = _concrete_float(name, value, expected)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise _invalid(name, value, expected)


def _adaptive_rescale(g: jax.Array, eta: Any, eps: Any) -> jax.Array:
    g = jnp.asarray(g)
    # A sum of squares in bf16/f16 loses most of its precision (and f16 overflows
    # at 65504), so the norm and the product are taken in at least float32.
    acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
    g_acc = g.astype(acc_dtype)
    norm = jnp.sqrt(jnp.sum(jnp.square(g_acc)))
    # The reference clamps the norm at 1e-12, which also turns an all-zero
    # gradient into zeros instead of 0/0.
    scale = eta * math.sqrt(g.size) / jnp.maximum(norm, eps)
    return (g_acc * scale).astype(g.dtype)


def scale_by_adaptive_lr(eta: float = 0.2, eps: float = 1e-12) -> optax.GradientTransformation:
    """Rescales each adder filter gradient by the AdderNet adaptive learning rate.

    Every leaf marked by :func:`adder_mask` (a whole adder-layer filter
    ``F_l``) becomes

    .. math::
        g_l \\cdot \\alpha_l, \\qquad
        \\alpha_l = \\frac{\\eta \\sqrt{k}}{\\max(\\|g_l\\|_2, \\epsilon)}

    where ``k`` is the number of elements of the filter and ``||g_l||_2`` the
    Frobenius norm of its gradient (section 3.3 of the paper), so each adder layer's
    update has norm ``eta * sqrt(k)`` whatever the size of its raw gradient.
    All other leaves are returned unchanged. The norm is computed in at least
    float32 and every leaf keeps its dtype.

    Args:
        eta: the hyper-parameter ``eta`` controlling the adder layers' learning
            rate relative to the others; the reference implementation uses 0.2.
        eps: lower bound on the gradient norm, so an all-zero gradient gives zeros.

    Returns:
        The corresponding ``optax.GradientTransformation``; it keeps no state.

    Raises:
        ValueError: if ``eta`` or ``eps`` is not a positive finite number.

    Example:
        >>> import jax.numpy as jnp
        >>> from adderjax import optim
        >>> tx = optim.scale_by_adaptive_lr(eta=0.2)
        >>> grads = {'adder': jnp.full((2, 2), 0.5), 'bias': jnp.full((2,), 0.5)}
        >>> updates, _ = tx.update(grads, tx.init(grads))
        >>> print(updates['adder'])  # 0.5 * 0.2 * sqrt(4) / ||grad|| with ||grad|| = 1
        [[0.2 0.2]
         [0.2 0.2]]
        >>> print(updates['bias'])
        [0.5 0.5]

    References:
        Chen et al., `AdderNet: Do We Really Need Multiplications in Deep Learning?
        <https://arxiv.org/abs/1912.13200>`_, CVPR 2020, section 3.3.
    """
    _check_positive("eta", eta)
    _check_positive("eps", eps)

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        mask = adder_mask(updates)
        updates = jax.tree.map(
            lambda g, is_adder: _adaptive_rescale(g, eta, eps) if is_adder else g, updates, mask
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def check_sgd_arguments(
    learning_rate: Any, momentum: Any, nesterov: Any, weight_decay: Any, eta: Any
) -> None:
    """Checks the arguments of `adder_sgd` (concrete values only; traced ones pass).

    Raises:
      InvalidArgumentError: the first argument out of its range, naming it.
    """
    if not callable(learning_rate):
        expected = "a positive finite number or an optax schedule"
        lr = _concrete_float("learning_rate", learning_rate, expected)
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise _invalid("learning_rate", learning_rate, expected)
    expected = "a number in [0, 1)"
    m = _concrete_float("momentum", momentum, expected)
    if m is not None and not 0 <= m < 1:
        raise _invalid("momentum", momentum, expected)
    if not isinstance(nesterov, (bool, np.bool_)):
        raise _invalid("nesterov", nesterov, "a bool")
    if nesterov and m == 0:
        # As in torch.optim.SGD: without momentum, Nesterov would silently do nothing.
        raise InvalidArgumentError(
            "nesterov",
            nesterov,
            "False when momentum is 0",
            "nesterov=True requires momentum > 0, got momentum=0",
        )
    expected = "a non-negative finite number"
    wd = _concrete_float("weight_decay", weight_decay, expected)
    if wd is not None and not (math.isfinite(wd) and wd >= 0):
        raise _invalid("weight_decay", weight_decay, expected)
    _check_positive("eta", eta)


def adder_sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
    eta: float = 0.2,
) -> optax.GradientTransformation:
    """SGD with momentum and weight decay after the AdderNet adaptive learning rate.

    This is the optimizer of the reference implementation: the adder filter
    gradients are first rescaled by :func:`scale_by_adaptive_lr`, then PyTorch's
    ``torch.optim.SGD`` is applied to all parameters, i.e. with ``d = g + wd * p``

    .. code-block:: text

        buf = momentum * buf + d                          (buf = d at the first step)
        p  -= lr * (d + momentum * buf if nesterov else buf)

    Weight decay is applied to every parameter (biases and normalisation scales
    included), as PyTorch's ``weight_decay`` does, except DeepShift-PS's shift and sign
    latents (:func:`decay_mask`, as ShiftAddNet trains them).

    Args:
        learning_rate: a positive global learning rate or an optax schedule.
        momentum: momentum coefficient in ``[0, 1)``; 0 disables momentum.
        nesterov: whether to use Nesterov momentum.
        weight_decay: non-negative coefficient of the L2 penalty added to the
            gradients; when it is 0, ``update`` may be called without ``params``.
        eta: the adder layers' learning-rate hyper-parameter, see
            :func:`scale_by_adaptive_lr`.

    Returns:
        The corresponding ``optax.GradientTransformation`` (an ``optax.chain``).

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> import jax.numpy as jnp
        >>> import optax
        >>> from adderjax import optim
        >>> params = {'adder': jnp.zeros((2, 2)), 'bias': jnp.zeros((2,))}
        >>> grads = {'adder': jnp.full((2, 2), 0.5), 'bias': jnp.full((2,), 0.5)}
        >>> tx = optim.adder_sgd(learning_rate=0.1, momentum=0.9)
        >>> opt_state = tx.init(params)
        >>> updates, opt_state = tx.update(grads, opt_state, params)
        >>> params = optax.apply_updates(params, updates)
        >>> print(params['adder'].round(4))
        [[-0.02 -0.02]
         [-0.02 -0.02]]
        >>> print(params['bias'].round(4))
        [-0.05 -0.05]

    References:
        Chen et al., `AdderNet: Do We Really Need Multiplications in Deep Learning?
        <https://arxiv.org/abs/1912.13200>`_, CVPR 2020.

        Sutskever et al., `On the importance of initialization and momentum in deep
        learning <https://proceedings.mlr.press/v28/sutskever13.html>`_, ICML 2013.
    """
    check_sgd_arguments(learning_rate, momentum, nesterov, weight_decay, eta)
    m = float(momentum) if not isinstance(momentum, jax.core.Tracer) else None
    wd = float(weight_decay) if not isinstance(weight_decay, jax.core.Tracer) else None

    transforms = [scale_by_adaptive_lr(eta)]
    # add_decayed_weights needs params even with a zero rate; leaving it out lets
    # weight-decay-free training call update() without them.
    if wd != 0:
        transforms.append(add_decayed_weights(weight_decay))
    if m != 0:
        transforms.append(optax.trace(decay=momentum, nesterov=bool(nesterov)))
    transforms.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*transforms)
