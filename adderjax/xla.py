"""The fast XLA formulation of the adder op, its filter gradient and its input gradient.

The naive ``-sum |patches[..., None] - w|`` materialises a (N*Ho*Wo, K, Cout) tensor and
runs 15-60x slower than a convolution. Here no patch tensor exists at all:

* forward (but for p = 2, which expands into a convolution): a `lax.scan` over chunks of
  input channels; each step unrolls its ``kh * kw * cb`` taps, each tap a strided slice of
  the padded input (one value per output pixel) broadcast against the filter row
  ``w[i, j, c, :]``. XLA fuses a whole step into one elementwise loop over the
  (N, Ho, Wo, Cout) accumulator, vectorised along Cout.
* input gradient: the same idea transposed, a scan over chunks of output channels whose
  accumulator is the input itself. For each tap the input pixel is fixed and the cotangent
  is a shifted slice: ``dx[n, a, b, :] += g[n, a - i, b - j, o] * f(w[i, j, :, o] - x[n, a, b, :])``
  is again one fused elementwise loop, vectorised along Cin. Strides > 1 are split into
  ``sh * sw`` phases (input rows ``a = s * a' + r``), each a stride-1 problem over the taps
  ``i = r (mod s)``, so no work is spent on zeros; only rows and columns of the unpadded input
  are computed.
* filter gradient: ``sum g * (x_patch - w) = corr(x, g) - w * sum(g)``, where the first term
  is exactly a convolution's filter gradient, which XLA computes with its conv kernels.

All of it accumulates in float32 (or float64) whatever the input dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from adderjax import geometry

__all__ = ["filter_grad", "forward", "input_grad", "sign_filter_grad"]

# Taps unrolled per scan step, tuned on a 2-core x86 CPU over the ResNet-20/50 shapes of
# benchmarks/ops.py: fewer re-read the accumulator too often; past ~54 (forward) or ~36
# (input gradient) the fused loop body falls off a cliff (2-3x slower), and compile time grows.
FORWARD_TAPS_PER_STEP = 36
INPUT_GRAD_TAPS_PER_STEP = 18


def _abs_pow(d, p, p_static):
    """|d| ** p; `forward` never gets here with p = 2 (it expands into a convolution)."""
    if p_static == 1.0:
        return jnp.abs(d)
    return jnp.abs(d) ** (p if p_static is None else p_static)


def _lp_grad(d, p, p_static):
    """sign(d) * |d| ** (p - 1), the l_p input gradient of arXiv:2105.14202 eq. 27."""
    if p_static == 1.0:
        return jnp.sign(d)
    if p_static == 2.0:
        return d
    q = (p if p_static is None else p_static) - 1
    return jnp.sign(d) * jnp.abs(d) ** q


def _chunks(total: int, target: int) -> tuple[int, int]:
    """(number of chunks, chunk size) covering `total` with the least padding."""
    n = math.ceil(total / max(1, target))
    return n, math.ceil(total / n)


def _pad_last(a, size: int):
    extra = size - a.shape[-1]
    if extra == 0:
        return a
    return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, extra)])


def _patch_taps(xpad, geom: geometry.ConvGeometry, i: int, j: int):
    """The input value under tap (i, j) for every output pixel: (N, Ho, Wo, C)."""
    (sh, sw), (ho, wo) = geom.strides, geom.out_hw
    return xpad[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]


def _sum_taps(x, w, geom: geometry.ConvGeometry, term, cd):
    """sum_{i, j, c} term(xpad[n, h*s + i, w*s + j, c], w[i, j, c, o]): (N, Ho, Wo, Cout)."""
    (kh, kw), (ho, wo) = geom.kernel_hw, geom.out_hw
    n, cin, cout = geom.batch, geom.in_channels, geom.out_channels
    nc, cb = _chunks(cin, FORWARD_TAPS_PER_STEP // (kh * kw))
    # Padded channels (x = w = 0) add term(0, 0), which is 0 for every term used here.
    xpad = _pad_last(geometry.pad_input(x.astype(cd), geom), nc * cb)
    ws = _pad_last(w.astype(cd).transpose(0, 1, 3, 2), nc * cb).transpose(0, 1, 3, 2)
    ws = ws.reshape(kh, kw, nc, cb, cout).transpose(2, 0, 1, 3, 4)

    def step(acc, chunk):
        # The input chunk is sliced in place (fused into the loop), not from a transposed
        # copy: that copy would cost as much memory as the input itself.
        c0, wc = chunk
        xc = lax.dynamic_slice_in_dim(xpad, c0 * cb, cb, axis=3)
        for i in range(kh):
            for j in range(kw):
                xt = _patch_taps(xc, geom, i, j)
                for c in range(cb):
                    acc = acc + term(xt[..., c : c + 1], wc[i, j, c][None, None, None, :])
        return acc, None

    acc, _ = lax.scan(step, jnp.zeros((n, ho, wo, cout), cd), (jnp.arange(nc), ws))
    return acc


def _conv(x, w, geom: geometry.ConvGeometry):
    """The multiplicative convolution of the same geometry, at full float32 precision."""
    return lax.conv_general_dilated(
        x,
        w,
        geom.strides,
        geom.pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )


def _patch_sums(a, geom: geometry.ConvGeometry):
    """sum over each padded input patch of `a` (N, H, W, C), additions only: (N, Ho, Wo)."""
    apad = geometry.pad_input(a, geom).sum(axis=-1)
    return lax.reduce_window(
        apad, jnp.zeros((), a.dtype), lax.add, (1, *geom.kernel_hw), (1, *geom.strides), "VALID"
    )


def forward(x, w, p, geom: geometry.ConvGeometry, p_static):
    """y = -sum |x_patch - w| ** p, (N, Ho, Wo, Cout) in the compute dtype."""
    cd = geometry.compute_dtype(x.dtype, w.dtype)
    xc, wc = x.astype(cd), w.astype(cd)

    def run(p_static):
        if p_static == 2.0:
            # |x - w|^2 = x^2 - 2 x w + w^2, so the l2 phase of the l_p schedule is a conv.
            xw = _conv(xc, wc, geom)
            sx2 = _patch_sums(xc * xc, geom)[..., None]
            sw2 = jnp.sum(wc * wc, axis=(0, 1, 2))[None, None, None, :]
            return 2 * xw - sx2 - sw2
        return _sum_taps(xc, wc, geom, lambda a, b: -_abs_pow(a - b, p, p_static), cd)

    return geometry.with_static_p(run, p, p_static)


def input_grad(x, w, g, p, geom: geometry.ConvGeometry, p_static, mode: str):
    """dx = sum_o g * f(w - x_patch) scattered onto x, f = hardtanh or the l_p rule."""
    cd = geometry.compute_dtype(x.dtype, w.dtype, g.dtype)
    (kh, kw), (sh, sw), (ho, wo) = geom.kernel_hw, geom.strides, geom.out_hw
    n, cin, cout = geom.batch, geom.in_channels, geom.out_channels
    xpad = geometry.pad_input(x.astype(cd), geom)
    wc, gc = w.astype(cd), g.astype(cd)
    hp, wp = xpad.shape[1:3]
    (pt, _), (pl, _) = geom.pads
    # Rows/columns of xpad that belong to x (padding may be negative, i.e. a crop).
    valid = ((max(pt, 0), min(pt + geom.in_hw[0], hp)), (max(pl, 0), min(pl + geom.in_hw[1], wp)))

    def phase_range(r, s, taps, out, lo_hi):
        # Phase rows a = s * a' + r, for a' in [a0, a1), that some tap reads and that lie in x.
        lo, hi = lo_hi
        a0 = max(0, -((r - lo) // s))
        a1 = min(out + taps - 1, -((r - hi) // s))
        return a0, a1

    # One zero-bordered, channel-padded cotangent shared by every phase: each tap is then a
    # plain slice of it, and padded channels (g = 0) add nothing.
    max_h, max_w = len(range(0, kh, sh)), len(range(0, kw, sw))
    # Each phase unrolls its own number of output channels per step (fewer taps, more channels).
    chunking = {
        (rh, rw): _chunks(
            cout, INPUT_GRAD_TAPS_PER_STEP // (len(range(rh, kh, sh)) * len(range(rw, kw, sw)))
        )
        for rh in range(min(sh, kh))
        for rw in range(min(sw, kw))
    }
    padded_cout = max(no * ob for no, ob in chunking.values())
    gp = jnp.pad(
        _pad_last(gc, padded_cout), ((0, 0), (max_h - 1, max_h - 1), (max_w - 1, max_w - 1), (0, 0))
    )

    def run(p_static):
        dx = jnp.zeros((n, *geom.in_hw, cin), cd)
        for (rh, rw), (no, ob) in chunking.items():
            taps_h, taps_w = len(range(rh, kh, sh)), len(range(rw, kw, sw))
            a0, a1 = phase_range(rh, sh, taps_h, ho, valid[0])
            b0, b1 = phase_range(rw, sw, taps_w, wo, valid[1])
            if a1 <= a0 or b1 <= b0:
                continue
            lo_h, lo_w = rh + sh * a0, rw + sw * b0
            hi_h, hi_w = rh + sh * (a1 - 1) + 1, rw + sw * (b1 - 1) + 1
            wsub = _pad_last(wc[rh::sh, rw::sw], no * ob)
            dph = _input_grad_phase(
                lambda rows=slice(lo_h, hi_h, sh), cols=slice(lo_w, hi_w, sw): xpad[
                    :, rows, cols, :
                ],
                wsub.reshape(taps_h, taps_w, cin, no, ob).transpose(3, 0, 1, 2, 4),
                gp,
                (a0 + max_h - 1, b0 + max_w - 1),
                mode,
                lambda d, p_static=p_static: _lp_grad(d, p, p_static),
            )
            # Interleave the phase back at rows rh + sh * a' - pt of x itself: the phases
            # only cover x, so no padded-size buffer is ever built.
            h, wd = geom.in_hw
            dx = dx + lax.pad(
                dph,
                jnp.zeros((), cd),
                (
                    (0, 0, 0),
                    (lo_h - pt, h - (hi_h - pt), sh - 1),
                    (lo_w - pl, wd - (hi_w - pl), sw - 1),
                    (0, 0, 0),
                ),
            )
        return dx

    if mode == "hardtanh":
        return run(1.0)  # the hardtanh rule does not depend on p
    return geometry.with_static_p(run, p, p_static)


def _input_grad_phase(xph_fn, ws, gp, offset, mode, lp_grad):
    """Stride-1 transposed adder: dx[a', b'] = sum_{k, l, o} g[a' - k, b' - l, o] * f(w - x).

    `xph_fn` builds the phase's input pixels inside the loop body, where XLA fuses the strided
    slice instead of keeping a copy; `ws` is (chunks, kh, kw, Cin, ob); `gp` the bordered
    cotangent, in which output row a' - k sits at row a' - k + offset.
    """
    no, kh, kw, _, ob = ws.shape
    a_off, b_off = offset

    def step(acc, chunk):
        o0, wc = chunk
        gc = lax.dynamic_slice_in_dim(gp, o0 * ob, ob, axis=3)
        xph = xph_fn()
        hq, wq = xph.shape[1:3]
        # Measured on XLA:CPU: the plain clip beats rewriting it without min/max, e.g. as
        # (|w + 1 - x| - |w - 1 - x|) / 2 (1.3x slower): the extra abs term costs more.
        if mode == "hardtanh":
            term = lambda wr: jnp.clip(wr - xph, -1.0, 1.0)
        else:
            term = lambda wr: lp_grad(wr - xph)
        for k in range(kh):
            for ll in range(kw):
                gt = gc[:, a_off - k : a_off - k + hq, b_off - ll : b_off - ll + wq]
                for o in range(ob):
                    acc = acc + gt[..., o : o + 1] * term(wc[k, ll, :, o][None, None, None, :])
        return acc, None

    dx, _ = lax.scan(step, jnp.zeros(jax.eval_shape(xph_fn).shape, gp.dtype), (jnp.arange(no), ws))
    return dx


# The CPU filter gradient builds patches for a few images at a time: about this many bytes of
# patches per chunk (and never more than a quarter of the input), small enough to stay in
# cache and to keep peak memory near the convolution's.
FILTER_GRAD_CHUNK_BYTES = 12 * 2**20


def filter_grad(x, w, g, geom: geometry.ConvGeometry):
    """dw = sum g * (x_patch - w) = corr(x, g) - w * sum_{n,h,w} g: the full-precision gradient.

    corr(x, g) is a convolution's filter gradient. XLA's own (`jax.vjp` of the conv) is used
    on GPU and TPU; on CPU, where it runs 1.3-2.4x slower than a matmul over patches
    (benchmarks/ops.py shapes), patches of a few images at a time go through one matmul each.
    """
    cd = geometry.compute_dtype(x.dtype, w.dtype, g.dtype)
    xc, wc, gc = x.astype(cd), w.astype(cd), g.astype(cd)
    corr = lax.platform_dependent(
        xc,
        wc,
        gc,
        cpu=functools.partial(_corr_by_patches, geom=geom),
        default=functools.partial(_corr_by_conv_vjp, geom=geom),
    )
    return corr - wc * jnp.sum(gc, axis=(0, 1, 2))[None, None, None, :]


def sign_filter_grad(x, w, g, geom: geometry.ConvGeometry):
    """dw = sum g * sign(x_patch - w): the true derivative of the l_1 forward (the ablation).

    A scan over the kh*kw taps; each tap's ``sum_{n,h,w} g[..., o] * sign(x[..., c] - w[c, o])``
    is one reduction that XLA fuses with its elementwise producer.
    """
    (kh, kw), (sh, sw), (ho, wo) = geom.kernel_hw, geom.strides, geom.out_hw
    cd = geometry.compute_dtype(x.dtype, w.dtype, g.dtype)
    xpad = geometry.pad_input(x.astype(cd), geom)
    gm = g.astype(cd).reshape(-1, 1, geom.out_channels)
    span_h, span_w = sh * (ho - 1) + 1, sw * (wo - 1) + 1

    def tap(t):
        i, j = t // kw, t % kw
        window = lax.dynamic_slice(
            xpad, (0, i, j, 0), (xpad.shape[0], span_h, span_w, xpad.shape[3])
        )
        xt = window[:, ::sh, ::sw, :].reshape(-1, geom.in_channels, 1)
        wt = lax.dynamic_index_in_dim(w.astype(cd).reshape(kh * kw, *w.shape[2:]), t, 0, False)
        return jnp.sum(gm * jnp.sign(xt - wt[None]), axis=0)

    return lax.map(tap, jnp.arange(kh * kw)).reshape(w.shape)


def _corr_by_conv_vjp(x, w, g, geom):
    _, vjp = jax.vjp(lambda w_: _conv(x, w_, geom), w)
    (corr,) = vjp(g)
    return corr


def _corr_by_patches(x, w, g, geom):
    (kh, kw), (ho, wo) = geom.kernel_hw, geom.out_hw
    n, cin, cout = geom.batch, geom.in_channels, geom.out_channels
    k = kh * kw * cin
    budget = min(FILTER_GRAD_CHUNK_BYTES, x.size * x.dtype.itemsize // 4)
    per_image = ho * wo * k * x.dtype.itemsize
    nb = max([d for d in range(1, n + 1) if n % d == 0 and d * per_image <= budget], default=1)
    xpad = geometry.pad_input(x, geom)

    def step(acc, i):
        xb = lax.dynamic_slice_in_dim(xpad, i * nb, nb, axis=0)
        gb = lax.dynamic_slice_in_dim(g, i * nb, nb, axis=0)
        taps = [_patch_taps(xb, geom, a, b) for a in range(kh) for b in range(kw)]
        patches = jnp.concatenate(taps, axis=-1).reshape(nb * ho * wo, k)
        return acc + jnp.dot(
            patches.T, gb.reshape(nb * ho * wo, cout), precision=lax.Precision.HIGHEST
        ), None

    corr, _ = lax.scan(step, jnp.zeros((k, cout), x.dtype), jnp.arange(n // nb))
    return corr.reshape(kh, kw, cin, cout)
