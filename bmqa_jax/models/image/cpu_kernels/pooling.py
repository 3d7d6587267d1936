"""Max pooling with a gradient that fuses on XLA:CPU.

XLA differentiates ``reduce_window(max)`` with ``select_and_scatter``, which
XLA:CPU runs as a variadic reduce-window over index arrays plus a scatter, a
large part of a ResNet's training step (docs/performance.md). Here the gradient is
written by hand (a ``jax.custom_vjp``) as elementwise work over the window's
taps: in row-major tap order, the first tap equal to the window's maximum
receives the gradient, as in ``torch.nn.functional.max_pool2d`` and XLA's own
``select_and_scatter`` (``>=`` selection), so ties (the zeros after a ReLU)
go where torchvision sends them.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmqa_jax.models.image.cpu_kernels import windows


def _taps(xp, window, strides, out_hw):
  for i in range(window[0]):
    for j in range(window[1]):
      yield i, j, windows.tap(xp, i, j, strides, out_hw)


def _geometry(x, window, strides, pads):
  return tuple(
    windows.out_size(n, p, k, s) for n, p, k, s in zip(x.shape[1:3], pads, window, strides)
  )


def _padded(x, pads):
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-jnp.inf)


def max_pool(inputs, window_shape, strides=None, padding="VALID"):
  """Drop-in ``flax.linen.max_pool`` for NHWC ``inputs``; other ranks go to
  ``flax.linen.max_pool`` unchanged."""
  if inputs.ndim != 4 or len(window_shape) != 2:
    return nn.max_pool(inputs, window_shape, strides, padding)
  window, strides = tuple(window_shape), tuple(strides or (1, 1))
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(inputs.shape[1:3], window, strides, padding)
  return _max_pool(inputs, window, strides, tuple(tuple(int(v) for v in p) for p in padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(
  x: jax.Array,
  window: tuple[int, int],
  strides: tuple[int, int],
  pads: tuple[tuple[int, int], tuple[int, int]],
) -> jax.Array:
  """``flax.linen.max_pool(x, window, strides, pads)`` for NHWC ``x`` (padding
  never wins: it is −inf)."""
  out = None
  for _, _, tap in _taps(_padded(x, pads), window, strides, _geometry(x, window, strides, pads)):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _fwd(x, window, strides, pads):
  out = _max_pool(x, window, strides, pads)
  return out, (x, out)


def _bwd(window, strides, pads, residuals, g):
  x, out = residuals
  xp = _padded(x, pads)
  zero, taken, dxp = jnp.zeros((), g.dtype), None, None
  for i, j, tap in _taps(xp, window, strides, out.shape[1:3]):
    hit = tap == out
    first = hit if taken is None else hit & ~taken
    taken = first if taken is None else taken | first
    term = windows.untap(jnp.where(first, g, zero), i, j, strides, xp.shape[1:3])
    dxp = term if dxp is None else dxp + term
  (top, _), (left, _) = pads
  return (dxp[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_pool.defvjp(_fwd, _bwd)
