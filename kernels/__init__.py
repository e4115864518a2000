"""Pallas kernels for the adder op (forward, input gradient, filter gradient).

Kernels only: no autodiff and no Flax here; `adderjax.ops` wires them into the op's
custom_vjp. The kernels themselves are not part of this release yet, so
`adderjax.adder_conv(..., implementation="pallas")` raises instead of falling back.
"""
