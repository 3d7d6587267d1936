"""Convolution for XLA:CPU, as ``nn.Conv``'s ``conv_general_dilated``.

The forward pass, the input gradient and a k×k kernel's gradient are XLA's
own. Two cases take another form:

* a depthwise kernel (one channel per group): shifted sums
  (:mod:`.depthwise`), where XLA:CPU would run a generic grouped loop;
* a 1×1 kernel or a patchify stem (a k×k kernel at stride k, unpadded, as in
  ViT and ConvNeXt): its weight gradient is one matrix product of the
  input's patches (a strided slice or a reshape) with the output gradient,
  where XLA:CPU would run a convolution-shaped reduction.

Same sums in another order (float32 differences ~1e-6 relative). What each
form buys is measured by ``launch/benchmark.py`` (docs/performance.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from bmqa_jax.models.image.cpu_kernels import depthwise
from bmqa_jax.models.image.cpu_kernels import windows

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """Drop-in ``lax.conv_general_dilated`` for NHWC inputs and HWIO kernels
  (``nn.Conv``'s layouts). Dilated, non-2-D or other grouped convolutions,
  and any precision setting, go to ``lax.conv_general_dilated`` unchanged."""
  del dimension_numbers  # nn.Conv passes NHWC/HWIO for 2-D inputs
  cin, cout = lhs.shape[-1], rhs.shape[-1]
  depthwise_kernel = feature_group_count == cin == cout != 1 and rhs.shape[2] == 1
  plain = (
    lhs.ndim != 4
    or kwargs
    or precision is not None
    or any(d != 1 for d in (lhs_dilation or (1, 1)))
    or any(d != 1 for d in (rhs_dilation or (1, 1)))
    or not (feature_group_count == 1 or depthwise_kernel)
  )
  if not plain:
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = tuple(tuple(int(v) for v in p) for p in padding)
    strides = tuple(int(s) for s in window_strides)
    if depthwise_kernel:
      return depthwise.depthwise_conv(lhs, rhs, strides, pads)
    if _one_product(rhs.shape[:2], strides, pads):
      return _conv(lhs, rhs, strides, pads)
  return jax.lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=_NHWC,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )


def _patchify(kernel_hw, strides, pads) -> bool:
  """A ViT/ConvNeXt stem: a k×k kernel (k > 1) at stride k, unpadded."""
  return (
    tuple(kernel_hw) == tuple(strides)
    and kernel_hw[0] * kernel_hw[1] > 1
    and all(p == (0, 0) for p in pads)
  )


def _one_product(kernel_hw, strides, pads) -> bool:
  """Whether the weight gradient is one matrix product: a 1×1 kernel or a
  patchify stem."""
  return kernel_hw[0] * kernel_hw[1] == 1 or _patchify(kernel_hw, strides, pads)


def _patches(x, kernel_hw, strides, pads, out_hw):
  """im2col, ``[B, Ho, Wo, Kh·Kw·C]`` (tap-major, channel-minor), of a
  patchify stem (a reshape) or a 1×1 kernel (a strided slice)."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
  b, _, _, c = x.shape
  if _patchify(kernel_hw, strides, pads):
    x = x[:, : ho * sh, : wo * sw]
    x = x.reshape(b, ho, sh, wo, sw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, ho, wo, kh * kw * c)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return windows.tap(xp, 0, 0, strides, out_hw)


def _xla_conv(x, w, strides, pads):
  return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  """XLA's convolution, with the weight gradient of :func:`_one_product`."""
  return _xla_conv(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _xla_conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, g):
  x, w = residuals
  dx = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads), x)[1](g)[0]
  kh, kw, cin, cout = w.shape
  p = _patches(x, (kh, kw), strides, pads, g.shape[1:3]).reshape(-1, kh * kw * cin)
  dw = jax.lax.dot_general(
    p, g.reshape(-1, cout), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )
  return dx, dw.reshape(kh, kw, cin, cout).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)
