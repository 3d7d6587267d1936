"""Depthwise convolution (kernel ``[Kh, Kw, 1, C]``, NHWC) for XLA:CPU.

XLA:CPU runs a grouped convolution with one channel per group as a generic
loop, many times slower than the sums below (docs/performance.md). Written
out as ``Kh·Kw`` shifted, strided slices times per-channel weights, the work
is elementwise and fuses into one loop.
Left to autodiff, though, every tap's gradient became instructions of its
own, and a ConvNeXt or EfficientNet training step took minutes to compile.

So the gradient is written by hand (a ``jax.custom_vjp``). Forward (stride s,
padded input x̂):

    y[b, p, q, c] = Σ_ij x̂[b, s·p + i, s·q + j, c] · w[i, j, c]

* ``dx``: the same sum over the gradient ``g`` (spread to stride 1 and padded)
  with the kernel flipped: one more fused loop;
* ``dw[i, j, c] = Σ_bpq x̂[b, s·p + i, s·q + j, c] · g[b, p, q, c]``: a loop
  (``lax.scan``) over the kernel's rows, each step the ``Kw`` reductions of
  that row's taps, so the program holds one row's taps instead of all of them
  (unrolled, ConvNeXt-T's step compiled and ran slower).

Only the input and the kernel are kept for the backward pass.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bmqa_jax.models.image.cpu_kernels import windows


def _shifted_sum(xp, w, strides, out_hw):
  """Σ_ij tap_ij(x̂) · w[i, j, 0]: every tap in one fused loop."""
  out = None
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      term = windows.tap(xp, i, j, strides, out_hw) * w[i, j, 0]
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_conv(
  x: jax.Array,
  w: jax.Array,
  strides: tuple[int, int],
  pads: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
  """``lax.conv_general_dilated(x, w, strides, pads, feature_group_count=C)``
  for NHWC ``x`` and HWIO ``w`` of shape ``[Kh, Kw, 1, C]``."""
  kh, kw = w.shape[:2]
  out_hw = (
    windows.out_size(x.shape[1], pads[0], kh, strides[0]),
    windows.out_size(x.shape[2], pads[1], kw, strides[1]),
  )
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return _shifted_sum(xp, w, strides, out_hw)


def _fwd(x, w, strides, pads):
  return depthwise_conv(x, w, strides, pads), (x, w)


def _bwd(strides, pads, residuals, g):
  x, w = residuals
  (kh, kw), (sh, sw) = w.shape[:2], strides
  ho, wo = g.shape[1:3]
  h, wd = x.shape[1:3]
  # dx: g at stride 1 (zeros between), padded by k − 1 − pad on each side (the
  # far side also by what the stride skipped), correlated with the flipped kernel.
  cfg = [(0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)]
  for axis, k, s, (lo, _), n, no in ((1, kh, sh, pads[0], h, ho), (2, kw, sw, pads[1], wd, wo)):
    top = k - 1 - lo
    cfg[axis] = (top, n + k - 1 - top - (s * (no - 1) + 1), s - 1)
  gp = jax.lax.pad(g, jnp.zeros((), g.dtype), cfg)
  dx = _shifted_sum(gp, w[::-1, ::-1], (1, 1), (h, wd))

  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))

  def row(_, i):
    # One multiply-reduce per tap: stacking the Kw products first wrote Kw
    # copies of the activations (a slower step).
    return None, jnp.stack(
      [jnp.sum(windows.tap(xp, i, j, strides, (ho, wo)) * g, axis=(0, 1, 2)) for j in range(kw)]
    )

  dw = jax.lax.scan(row, None, jnp.arange(kh))[1]
  return dx.astype(x.dtype), dw[:, :, None, :].astype(w.dtype)


depthwise_conv.defvjp(_fwd, _bwd)
