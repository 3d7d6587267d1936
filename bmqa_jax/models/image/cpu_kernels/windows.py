"""Sliding-window geometry shared by the CPU forms of convolution (im2col,
depthwise) and max pooling: a window tap of a padded NHWC map, and the
inverse placement of a gradient at that tap's positions."""

from __future__ import annotations

import jax


def out_size(n: int, pad: tuple[int, int], k: int, s: int) -> int:
  """Outputs of a window of `k` at stride `s` over `n` values padded by `pad`."""
  return (n + sum(pad) - k) // s + 1


def tap(xp: jax.Array, i, j: int, strides: tuple[int, int], out_hw: tuple[int, int]) -> jax.Array:
  """x̂[:, sh·p + i, sw·q + j] for p < ho, q < wo: tap (i, j) of every window
  of the padded map `xp`. `i` may be traced (a loop over the kernel's rows)."""
  (sh, sw), (ho, wo) = strides, out_hw
  if isinstance(i, int):
    b, _, _, c = xp.shape
    return jax.lax.slice(
      xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1)
    )
  rows = jax.lax.dynamic_slice_in_dim(xp, i, sh * (ho - 1) + 1, axis=1)[:, ::sh]
  return jax.lax.slice_in_dim(rows, j, j + sw * (wo - 1) + 1, sw, axis=2)


def untap(
  v: jax.Array, i: int, j: int, strides: tuple[int, int], padded_hw: tuple[int, int]
) -> jax.Array:
  """The transpose of `tap`: `v` ([B, ho, wo, C]) placed at tap (i, j)'s
  positions of a zero map of the padded size `padded_hw`."""
  (sh, sw), (ho, wo), (hp, wp) = strides, v.shape[1:3], padded_hw
  cfg = (
    (0, 0, 0),
    (i, hp - i - sh * (ho - 1) - 1, sh - 1),
    (j, wp - j - sw * (wo - 1) - 1, sw - 1),
    (0, 0, 0),
  )
  return jax.lax.pad(v, jax.numpy.zeros((), v.dtype), cfg)
