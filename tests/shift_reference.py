"""ShiftAddNet's shift weights in PyTorch, for testing `adderjax.shift` against their code.

Copied from GATECH-EIC/ShiftAddNet at 654a632 (MIT License, Copyright (c) 2020 Haoran You):
the straight-through functions of ``deepshift/ste.py`` that a shift layer's weight goes
through, ``round_to_fixed`` and ``round`` of ``deepshift/utils.py``, and the weight
computations of ``Conv2dShift.forward`` (``deepshift/modules.py:333-342``, without its
in-place clamp of the latent, which `ps_weight` does on a copy) and ``LinearShiftQ.forward``
(``deepshift/modules_q.py:118-119``, likewise).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.autograd import Function


def round_to_fixed(input, fraction=16, integer=16):
    assert integer >= 1, integer
    if integer == 1:
        return torch.sign(input) - 1
    delta = math.pow(2.0, -(fraction))
    bound = math.pow(2.0, integer - 1)
    min_val = -bound
    max_val = bound - 1
    rounded = torch.floor(input / delta) * delta

    clipped_value = torch.clamp(rounded, min_val, max_val)
    return clipped_value


def _round(x, rounding="deterministic"):
    assert rounding in ["deterministic", "stochastic"]
    if rounding == "stochastic":
        x_floor = x.floor()
        return x_floor + torch.bernoulli(x - x_floor)
    else:
        return x.round()


def dynamic_range_for_sign(sign, threshold):
    with torch.no_grad():
        sign.data[sign.data < -threshold] = -1
        sign.data[sign.data > threshold] = 1
        sign.data[(-threshold <= sign.data) & (sign.data <= threshold)] = 0
    return sign


class myRoundFunction(Function):  # noqa: N801
    @staticmethod
    def forward(ctx, input, threshold):
        return dynamic_range_for_sign(input, threshold)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class RoundFunction(Function):
    @staticmethod
    def forward(ctx, input, rounding="deterministic"):
        return _round(input, rounding)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class SignFunction(Function):
    @staticmethod
    def forward(ctx, input):
        return torch.sign(input)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


class RoundPowerOf2(Function):
    @staticmethod
    def forward(ctx, input, stochastic=False):
        sign = torch.sign(input)
        shift = _round(torch.log(torch.abs(input)) / np.log(2), "deterministic")
        return (2.0**shift) * sign

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


class UnsymmetricGradMulFunction(Function):
    @staticmethod
    def forward(ctx, input1, input2):
        ctx.save_for_backward(input1, input2)
        return torch.mul(input1, input2)

    @staticmethod
    def backward(ctx, grad_output):
        input1, input2 = ctx.saved_tensors
        return grad_output * input2, grad_output


def clampabs(input, min, max):
    assert min >= 0 and max >= 0
    input = input.clone()
    input[input > max] = max
    input[input < -max] = -max
    input[(input > torch.zeros_like(input)) & (input < min)] = min
    input[(input < torch.zeros_like(input)) & (input > -min)] = -min
    return input


def ps_weight(shift, sign, shift_range=(-14, 0), threshold=None):
    """Conv2dShift.forward's weight_ps from latents that are leaves of the autograd graph."""
    clamped = shift.detach().clamp(*shift_range).requires_grad_()
    shift_rounded = RoundFunction.apply(clamped, "deterministic")
    if threshold is None:
        sign_rounded_signed = SignFunction.apply(RoundFunction.apply(sign, "deterministic"))
    else:
        sign_rounded_signed = SignFunction.apply(myRoundFunction.apply(sign.clone(), threshold))
    return UnsymmetricGradMulFunction.apply(2**shift_rounded, sign_rounded_signed), clamped


def q_weight(weight, shift_range=(-15, 0)):
    """LinearShiftQ.forward's weight_q (its in-place clampabs done on a copy)."""
    clamped = clampabs(weight.detach(), 2 ** shift_range[0], 2 ** shift_range[1])
    clamped.requires_grad_()
    return RoundPowerOf2.apply(clamped, False), clamped
