"""oneDNN's convolution kernels inside XLA:CPU programs.

jaxlib's x86 CPU backend links oneDNN (the library behind torch's CPU
convolutions) and runs a custom call named ``__onednn$convolution`` with it,
but XLA only rewrites convolutions into that call in builds made for it. This
module emits the call itself, through ``jax.ffi.ffi_call`` with the call's
``OneDnnConvolutionConfig`` as the backend config: a forward convolution
(oneDNN's ``forward_inference``, brgemm kernels on AVX-512) for any layout of
the operands.

Measured on the 2-core AVX-512 machine of the README (batch 8, float32, the
custom call against XLA's own convolution): a 3×3 convolution at 56 px with
64 channels 9.0 against 11.1 ms forward and 8.9 against 11.1 ms for the input
gradient; at 7 px with 512 channels 8.4 against 11.6 and 9.0 against 14.1 ms;
1×1 convolutions 10–20 % faster forward; ConvNeXt's 7×7 depthwise
convolution 3.4 against 8.7 ms at 56 px and 0.6 against 7.7 ms at 14 px
(against :mod:`bmqa_jax.models.image.depthwise`'s shifted sums). The call computes forward
convolutions only: a weight gradient written as one (the gradient as a
kernel the size of the map) falls to oneDNN's reference loop (seconds), so
weight gradients run elsewhere: :mod:`bmqa_jax.models.image.onednn_weight_grad`
(oneDNN's backward-weights kernel through an FFI call of its own) or XLA.

:func:`available` checks once per process that the call compiles, runs and
matches ``lax.conv_general_dilated``; where it does not (another CPU, a jaxlib
without oneDNN, a GPU, several devices), callers use XLA's convolution.
XLA's persistent compilation cache cannot store programs that hold these
calls (jaxlib 0.10), so ``launch/score.py``, where start-up is most of the
time, leaves them off (``--onednn``, :func:`bmqa_jax.runtime.use_onednn`).
"""

from __future__ import annotations

import functools
import json
import platform
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax import runtime
from bmqa_jax.models.image import windows

TARGET = '__onednn$convolution'
MATMUL_TARGET = '__onednn$matmul'

# Operand layouts as the config names them: data tensors (batch, feature,
# spatial...), kernels (input feature, output feature, spatial...).
NHWC = (0, 3, 1, 2)
HWIO = (2, 3, 0, 1)
HWOI = (3, 2, 0, 1)  # an HWIO kernel read with its channel roles swapped

Pads = tuple[tuple[int, int], tuple[int, int]]


def _config(kernel_shape: Sequence[int], inp: Sequence[int], ker: Sequence[int],
            out: Sequence[int], strides: Sequence[int], pads: Pads,
            groups: int) -> str:
  """The ``xla.cpu.BackendConfig`` JSON of one convolution call. The runtime
  reads spatial dims 0-based and window dilations with an offset of one
  (1 = none); strides and pads as they are."""
  def data(dims):
    return {'dims': 4, 'data': {'batch_dim': dims[0], 'feature_dim': dims[1],
                                'spatial_dims': list(dims[2:])}}
  return json.dumps({'onednn_conv_config': {
      'dims': 4,
      'input': data(inp),
      'kernel': {'dims': 4, 'filter': {
          'input_feature_dim': ker[0], 'output_feature_dim': ker[1],
          'spatial_dims': list(ker[2:]), 'shape': [int(s) for s in kernel_shape]}},
      'output': data(out),
      'window': {'size': [int(kernel_shape[d]) for d in ker[2:]],
                 'pad_left': [int(p[0]) for p in pads],
                 'pad_right': [int(p[1]) for p in pads],
                 'strides': [int(s) for s in strides],
                 'window_dilations': [1, 1]},
      'feature_groups': groups}})


def _call(x, w, out_shape, ker, strides, pads, groups=1):
  cfg = _config(w.shape, NHWC, ker, NHWC, strides, pads, groups)
  return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, x.dtype),
                          custom_call_api_version=1, legacy_backend_config=cfg)(x, w)


def forward(x: jax.Array, w: jax.Array, strides: Sequence[int], pads: Pads,
            depthwise: bool = False) -> jax.Array:
  """``lax.conv_general_dilated(x, w, strides, pads)`` for NHWC ``x`` and
  HWIO ``w`` (no dilation), as one oneDNN call: one group, or with
  ``depthwise`` one group per channel (``w`` ``[Kh, Kw, 1, C]``)."""
  b, h, wd, _ = x.shape
  kh, kw, _, cout = w.shape
  oh = windows.out_size(h, pads[0], kh, strides[0])
  ow = windows.out_size(wd, pads[1], kw, strides[1])
  return _call(x, w, (b, oh, ow, cout), HWIO, strides, pads, cout if depthwise else 1)


def supports(x: jax.Array, w: jax.Array) -> bool:
  """Whether the calls here take these operands: float32 only (bf16 keeps
  XLA's kernels)."""
  return x.dtype == w.dtype == jnp.float32


def _phase(size: int, out_size: int, k: int, stride: int, pad_lo: int, r: int):
  """One output phase of a strided input gradient along one axis.

  Padded input position ``t = s·q + r`` receives ``Σ_m g[q - m] · w[r + s·m]``
  (``m < M = ⌈(k - r) / s⌉``): a stride-1 correlation of ``g`` with the
  sub-kernel ``w[r::s]`` flipped. Returns ``(taps, first, count, g_lo, g_hi)``:
  the sub-kernel slice, the first unpadded input row of the phase, how many
  rows it has, and the padding (negative: cropping) of ``g`` that makes the
  correlation produce exactly those rows; None where the phase is empty.
  """
  m = -(-(k - r) // stride)
  q_min = -(-(pad_lo - r) // stride)
  q_max = (pad_lo + size - 1 - r) // stride
  count = q_max - q_min + 1
  if m <= 0 or count <= 0:
    return None
  g_lo = m - 1 - q_min
  g_hi = count + m - 1 - out_size - g_lo
  return slice(r, None, stride), stride * q_min + r - pad_lo, count, g_lo, g_hi


def input_grad(g: jax.Array, w: jax.Array, strides: Sequence[int], pads: Pads,
               in_shape: Sequence[int], depthwise: bool = False) -> jax.Array:
  """The input gradient of :func:`forward`, as forward oneDNN convolutions.

  Stride 1: the output gradient ``g`` convolved with the kernel flipped in
  space and read with its channel roles swapped (``dx = g ⋆ rot180(w)ᵀ``),
  padded by ``k - 1 - p``. Stride s: the same for each of the s² phases of
  the input (its rows ``≡ r`` mod s see only the taps ``w[r::s]``), each
  spread back to stride s by ``lax.pad``'s interior padding and summed — no
  multiply by inserted zeros. A depthwise kernel keeps its layout (each
  channel is its own group).
  """
  b, h, wd, cin = in_shape
  (kh, kw), (sh, sw) = w.shape[:2], strides
  dx = None
  for ry in range(sh):
    py = _phase(h, g.shape[1], kh, sh, pads[0][0], ry)
    for rx in range(sw):
      px = _phase(wd, g.shape[2], kw, sw, pads[1][0], rx)
      if py is None or px is None:
        continue
      (ty, y0, ny, ylo, yhi), (tx, x0, nx, xlo, xhi) = py, px
      # Negative pads crop g; the rest is the convolution's own padding.
      gp = g[:, max(-ylo, 0):g.shape[1] - max(-yhi, 0), max(-xlo, 0):g.shape[2] - max(-xhi, 0)]
      sub = w[ty, tx][::-1, ::-1]
      part = _call(gp, sub, (b, ny, nx, cin), HWIO if depthwise else HWOI, (1, 1),
                   ((max(ylo, 0), max(yhi, 0)), (max(xlo, 0), max(xhi, 0))),
                   cin if depthwise else 1)
      if (sh, sw) != (1, 1):
        part = jax.lax.pad(part, jnp.zeros((), part.dtype), (
            (0, 0, 0), (y0, h - y0 - (ny - 1) * sh - 1, sh - 1),
            (x0, wd - x0 - (nx - 1) * sw - 1, sw - 1), (0, 0, 0)))
      dx = part if dx is None else dx + part
  return jnp.zeros(in_shape, g.dtype) if dx is None else dx


def matmul(a: jax.Array, b: jax.Array, transpose_a: bool = False,
           transpose_b: bool = False) -> jax.Array:
  """``op(a) @ op(b)`` for 2-D ``a`` and ``b`` as one oneDNN matmul
  (``__onednn$matmul``), ``op`` transposing where asked. For a convolution's
  weight gradient (``aᵀ @ b``) 1.2–1.9× faster than XLA:CPU's dot on the
  README machine; for ConvNeXt's pointwise layers 1.0–1.7×."""
  m = a.shape[1] if transpose_a else a.shape[0]
  n = b.shape[0] if transpose_b else b.shape[1]
  cfg = json.dumps({'onednn_matmul_config': {'transpose_a': transpose_a,
                                             'transpose_b': transpose_b}})
  return jax.ffi.ffi_call(MATMUL_TARGET, jax.ShapeDtypeStruct((m, n), a.dtype),
                          custom_call_api_version=1, legacy_backend_config=cfg)(a, b)


@jax.custom_vjp
def _dense(a, b):
  return matmul(a, b)


def _dense_fwd(a, b):
  return matmul(a, b), (a, b)


def _dense_bwd(residuals, g):
  a, b = residuals
  return matmul(g, b, transpose_b=True), matmul(a, g, transpose_a=True)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None, **kwargs):
  """``lax.dot_general`` (the ``dot_general`` field of ``nn.Dense``) whose
  float32 ``[..., K] @ [K, N]`` products, and their two gradients, are oneDNN
  matmuls; any other product is ``lax.dot_general``'s."""
  (lhs_c, rhs_c), (lhs_b, rhs_b) = dimension_numbers
  plain = (rhs.ndim != 2 or tuple(lhs_c) != (lhs.ndim - 1,) or tuple(rhs_c) != (0,)
           or lhs_b or rhs_b or precision is not None or kwargs
           or not supports(lhs, rhs)
           or preferred_element_type not in (None, jnp.float32))
  if plain:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)
  out = _dense(lhs.reshape(-1, lhs.shape[-1]), rhs)
  return out.reshape(lhs.shape[:-1] + (rhs.shape[1],))


def available() -> bool:
  """Whether this process runs the oneDNN call: allowed
  (:func:`bmqa_jax.runtime.use_onednn`, ``--onednn``), the default backend is
  a single x86 CPU device, and a small forward, input gradient and matmul
  match XLA's (checked once: a compile of a few milliseconds)."""
  return runtime.onednn_allowed() and _works()


@functools.cache
def _works() -> bool:
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    return False
  try:
    if jax.default_backend() != 'cpu' or jax.device_count() != 1:
      return False
    with jax.ensure_compile_time_eval():  # also when first asked inside a jit trace
      return _matches_xla()
  except Exception:  # pylint: disable=broad-except  # no oneDNN in this jaxlib
    return False


def _matches_xla() -> bool:
  """A 3×3 forward, its input gradient and a transposed matmul on a tiny
  batch, against XLA's."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 6, 5, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  pads = ((1, 1), (1, 1))
  dn = ('NHWC', 'HWIO', 'NHWC')
  ref, vjp = jax.vjp(lambda x_: jax.lax.conv_general_dilated(
      x_, w, (1, 1), pads, dimension_numbers=dn), x)
  got = jax.jit(forward, static_argnums=(2, 3))(x, w, (1, 1), pads)
  g = jnp.ones_like(ref)
  dx = jax.jit(input_grad, static_argnums=(2, 3, 4))(g, w, (1, 1), pads, x.shape)
  a = x.reshape(-1, 3)
  b = ref.reshape(-1, 4)
  prod = jax.jit(functools.partial(matmul, transpose_a=True))(a, b)
  return bool(np.allclose(got, ref, atol=1e-4) and np.allclose(dx, vjp(g)[0], atol=1e-4)
              and np.allclose(prod, a.T @ b, atol=1e-4))
