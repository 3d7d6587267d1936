"""A convolution's weight gradient on oneDNN, through an XLA FFI call.

XLA:CPU computes the weight gradient of a k×k convolution (k > 1) with its
own generic loop; oneDNN's ``convolution_backward_weights``, the kernel torch
trains with on a CPU, is faster on the large maps of VGG-19 and of ResNet's
stem. With ``groups`` it also takes grouped and depthwise kernels
(:func:`depthwise_worth_it` says where :mod:`bmqa_jax.models.image.depthwise`
uses it). jaxlib's oneDNN runs forward convolutions only
(:mod:`bmqa_jax.models.image.onednn`), so this module compiles a small FFI
handler (``csrc/onednn_weight_grad.cc``) against the system's oneDNN
(Debian/Ubuntu: ``apt-get install libdnnl-dev g++``) on first use, caches the
library under ``$BMQA_CACHE_DIR/ext`` (default ``~/.cache/bmqa_jax/ext``) and
registers it with XLA. The handler splits the batch into one chunk per XLA
thread, runs each chunk single-threaded in oneDNN and sums the partial
gradients (oneDNN's OpenMP threads and XLA's pool would otherwise fight over
the cores).

Measured on the README's 2-core AVX-512 machine (batch 8, float32, this call
against XLA's weight gradient): a 3×3 kernel 3→64 channels at 224 px 10.8
against 51.9 ms, 64→64 at 224 px 177 against 293 ms, 256→256 at 56 px 163
against 181 ms, 512→512 at 14 px 44.5 against 38.7 ms; ResNet's 7×7 stride-2
stem 11.7 against 19.2 ms; at small maps XLA's is faster
(:data:`MIN_OUTPUT_PIXELS`). A whole VGG-19 training step ran 1.24× faster.

:func:`available` builds, loads and checks the call once per process against
``lax.conv_general_dilated``'s gradient; where it cannot (no compiler, no
oneDNN headers, no oneDNN convolutions in this process),
:func:`unavailable_reason` says why and :mod:`bmqa_jax.models.image.layers`
keeps XLA's weight gradient.
``BMQA_ONEDNN_WEIGHT_GRAD=0`` turns the call off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import tempfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax import runtime
from bmqa_jax.models.image import onednn

TARGET = 'bmqa_onednn_weight_grad'
SOURCE = pathlib.Path(__file__).with_name('csrc') / 'onednn_weight_grad.cc'

Pads = tuple[tuple[int, int], tuple[int, int]]
# Smallest output map (pixels) whose weight gradient goes to oneDNN: below it
# XLA's was as fast or faster (ResNet-50 at 7 px with 512 channels 9.4 against
# 12.9 ms; VGG-19 at 14 px 38.7 against 44.5 ms), at and above it oneDNN's
# was faster (at 28 px with 128 channels 8.4 against 10.4 ms).
MIN_OUTPUT_PIXELS = 28 * 28
_NEEDS = ('it needs a C++ compiler and oneDNN\'s headers and library '
          '(Debian/Ubuntu: apt-get install g++ libdnnl-dev)')


def build_command(source: str | os.PathLike, output: str | os.PathLike) -> list[str]:
  """The compiler command: ``$CXX`` (default ``c++``), the handler against
  jaxlib's FFI headers and the system's ``libdnnl``."""
  return [os.environ.get('CXX', 'c++'), '-O2', '-std=c++17', '-shared', '-fPIC',
          '-fopenmp', '-w', f'-I{jax.ffi.include_dir()}', str(source), '-o',
          str(output), '-ldnnl']


def build(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """The compiled handler, built once per source, jax version and command
  under ``cache_dir`` (default ``$BMQA_CACHE_DIR/ext``) and moved into place
  atomically, so processes starting side by side never load half a file.
  Raises ``RuntimeError`` with the compiler's message when the build fails."""
  cache = pathlib.Path(cache_dir or os.path.join(runtime.cache_root(), 'ext'))
  key = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()
                       + ' '.join(build_command('S', 'O')).encode()).hexdigest()[:16]
  path = cache / f'onednn_weight_grad-{key}.so'
  if path.exists():
    return path
  cache.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=cache)
  os.close(fd)
  command = build_command(SOURCE, tmp)
  try:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
      message = (result.stderr or result.stdout).strip().splitlines()
      raise RuntimeError(f'building {SOURCE.name} failed ({" ".join(command)}'
                         f'): {" ".join(message[-3:])}; {_NEEDS}')
    os.replace(tmp, path)
  except OSError as e:  # no compiler at all
    raise RuntimeError(f'building {SOURCE.name} failed: {e}; {_NEEDS}') from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def weight_grad(x: jax.Array, g: jax.Array, kernel_shape: Sequence[int],
                strides: Sequence[int], pads: Pads, groups: int = 1) -> jax.Array:
  """dL/dW (HWIO, float32) of ``conv(x, W)`` (NHWC, ``strides``, explicit
  ``pads``, ``feature_group_count=groups``) given the output gradient ``g``
  (NHWC). Needs :func:`available`."""
  (top, bottom), (left, right) = pads
  call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(tuple(kernel_shape), jnp.float32))
  return call(x.astype(jnp.float32), g.astype(jnp.float32),
              stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(top), pad_bottom=np.int64(bottom),
              pad_left=np.int64(left), pad_right=np.int64(right),
              groups=np.int64(groups))


def worth_it(output_shape: Sequence[int]) -> bool:
  """Whether a gradient of this NHWC output shape is faster on oneDNN."""
  return output_shape[0] > 0 and output_shape[1] * output_shape[2] >= MIN_OUTPUT_PIXELS


def depthwise_worth_it(output_shape: Sequence[int], kernel_shape: Sequence[int]) -> bool:
  """Whether a depthwise kernel's gradient (kernel ``[Kh, Kw, 1, C]``, NHWC
  output shape) is faster here than :mod:`bmqa_jax.models.image.depthwise`'s
  per-tap reductions: where the output map is at least twice the kernel both
  ways. Measured (batch 8, this call against the reductions): ConvNeXt's 7×7
  at 56 px 24.4 against 79.8 ms, at 14 px 7.9 against 14.2 ms; EfficientNet's
  3×3 at 112 px 1.9 against 40.4 ms, 5×5 stride 2 to 28 px 7.5 against
  20.2 ms, 3×3 at 7 px with 2688 channels 0.3 against 3.5 ms. Below that
  size the reductions won: 7×7 at 7 px 5.4 against 12.5 ms (oneDNN's
  depthwise kernel declines it and its generic grouped one runs), 5×5
  stride 2 to 7 px 2.9 against 3.7 ms."""
  return (output_shape[0] > 0 and output_shape[1] >= 2 * kernel_shape[0]
          and output_shape[2] >= 2 * kernel_shape[1])


def available() -> bool:
  """Whether this process runs :func:`weight_grad`: oneDNN's convolutions run
  here (:func:`onednn.available`: x86, one CPU device, allowed) and the call
  is built, registered and matches XLA's gradient (checked once)."""
  return unavailable_reason() == ''


def unavailable_reason() -> str:
  """Why :func:`available` is False ('' when it is True)."""
  if not onednn.available():
    return ('oneDNN convolutions do not run in this process '
            '(bmqa_jax.models.image.onednn.available)')
  return _status()


@functools.cache
def _status() -> str:
  if os.environ.get('BMQA_ONEDNN_WEIGHT_GRAD', '1') == '0':
    return 'turned off by BMQA_ONEDNN_WEIGHT_GRAD=0'
  try:
    library = ctypes.CDLL(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.BmqaOnednnWeightGrad),
                                platform='cpu')
    with jax.ensure_compile_time_eval():  # also when first asked inside a trace
      error = _error_against_xla()
  except (RuntimeError, OSError) as e:
    return str(e)
  if not error < 1e-4:
    return f'the oneDNN weight gradient differs from XLA\'s (relative error {error:.1e})'
  return ''


def _error_against_xla() -> float:
  """Largest relative difference from XLA's gradient on small asymmetric
  cases (odd batch, stride 2, uneven pads): a full convolution and a
  depthwise one."""
  return max(error_against_xla((3, 9, 8, 5), (3, 3, 5, 4), (2, 1), ((1, 0), (2, 1))),
             error_against_xla((3, 9, 8, 6), (3, 3, 1, 6), (2, 1), ((1, 0), (2, 1)),
                               groups=6))


def error_against_xla(x_shape: Sequence[int], kernel_shape: Sequence[int],
                      strides: Sequence[int], pads: Pads, groups: int = 1) -> float:
  """Relative difference (largest, over the largest of XLA's) between
  :func:`weight_grad` and ``lax.conv_general_dilated``'s weight gradient on
  random data of these shapes."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.zeros(kernel_shape, jnp.float32)
  conv = lambda w_: jax.lax.conv_general_dilated(
      x, w_, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=groups)
  out, vjp = jax.vjp(conv, w)
  g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
  ref = vjp(g)[0]
  got = jax.jit(weight_grad, static_argnums=(2, 3, 4, 5))(
      x, g, tuple(kernel_shape), tuple(strides), pads, groups)
  return float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
