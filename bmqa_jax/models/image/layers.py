"""Pieces shared by the image-encoder families: torch-matching initialisers,
stochastic depth, the common output dict of every encoder, and the CPU forms
of convolution (oneDNN calls for the forward pass and input gradient, a
matrix-multiply weight gradient; depthwise on oneDNN or as shifted sums) and
max pooling (a fused gradient), chosen by ``conv_impl``."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.models.image import depthwise
from bmqa_jax.models.image import onednn
from bmqa_jax.models.image import onednn_weight_grad
from bmqa_jax.models.image import pooling
from bmqa_jax.models.image import windows

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): torchvision's
# convolution init for ResNet, VGG and EfficientNet.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# torch.nn.Linear's default init of the weight (kaiming_uniform with a=sqrt(5)),
# which is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def encoder_outputs(module: nn.Module, pooled: jax.Array, tokens: jax.Array, *,
                    head_name: str, head_init=nn.initializers.lecun_normal(),
                    dropout_rate: float = 0.0, train: bool = False,
                    stage_maps: Sequence[jax.Array] = ()) -> dict[str, Any]:
  """The dict every encoder returns, in float32.

  Must be called from inside ``module``'s ``@nn.compact`` ``__call__``: when
  ``module.num_classes`` is set, it adds the classifier ``nn.Dense`` named
  ``head_name`` (torchvision's last ``Linear``), preceded by dropout at
  ``dropout_rate`` in training.

  ``stage_maps`` are the family's per-stage feature maps (``[B, H, W, C]`` or
  ``[B, N, C]``); with ``module.levels`` non-empty, the ones it names are
  returned flattened as ``levels``.

  Returns:
    ``pooled`` ``[B, D]`` (the vector the classifier sees), ``tokens``
    ``[B, N, C]``, ``levels`` (a tuple of ``[B, N_l, C_l]``, only when
    ``module.levels`` is set) and, with a classifier, ``logits``
    ``[B, num_classes]``.
  """
  out = {'pooled': pooled.astype(jnp.float32), 'tokens': tokens.astype(jnp.float32)}
  wanted = tuple(getattr(module, 'levels', ()) or ())
  if wanted:
    out['levels'] = select_levels(stage_maps, wanted, type(module).__name__)
  if module.num_classes:
    x = pooled
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    head = nn.Dense(module.num_classes, dtype=module.dtype,
                    param_dtype=module.param_dtype, kernel_init=head_init,
                    name=head_name)
    out['logits'] = head(x).astype(jnp.float32)
  return out


def select_levels(stage_maps: Sequence[jax.Array], wanted: Sequence[int],
                  owner: str) -> tuple[jax.Array, ...]:
  """The stage maps at indices ``wanted``, flattened to float32 ``[B, N, C]``.

  Multi-level features (as HyperIQA, DBCNN and TOPIQ read them): early stages
  keep the fine-grained noise and blur that the last one averages away.
  """
  bad = [i for i in wanted if not -len(stage_maps) <= i < len(stage_maps)]
  if bad:
    raise ValueError(f'{owner} has {len(stage_maps)} stages (levels 0..'
                     f'{len(stage_maps) - 1}); asked for levels {list(wanted)}')
  return tuple(stage_maps[i].reshape(stage_maps[i].shape[0], -1,
                                     stage_maps[i].shape[-1]).astype(jnp.float32)
               for i in wanted)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, ``x · ½(1 + erf(x / √2))``: torch's ``nn.GELU()`` formula.

  ``jax.nn.gelu(approximate=False)`` computes the same function through
  ``erfc``, which XLA:CPU evaluates more slowly (1.83 against 0.68 ms for
  ConvNeXt-B's 3.2 M stage-3 activations); ConvNeXt-B's training step, with
  149 M activations per batch of 8, runs 2.8 % faster with this one.
  """
  return x * (0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype))))


class StochasticDepth(nn.Module):
  """torchvision's ``StochasticDepth(p, mode='row')``: in training, drops the
  whole residual branch of each sample with probability ``rate`` and scales the
  kept ones by ``1 / (1 - rate)``; identity in eval mode. Uses the ``'dropout'``
  RNG stream."""

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


# ---------------------------------------------------------------------------
# Convolution with a matrix-multiply weight gradient (fast path for XLA:CPU).
# ---------------------------------------------------------------------------

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _patches(x, kernel_hw, strides, pads, out_hw):
  """im2col, ``[B, Ho, Wo, Kh·Kw·C]`` (tap-major, channel-minor), for the
  kernels whose weight gradient is one matrix product: a patchify stem (a
  reshape) or a 1×1 kernel (a strided slice)."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
  b, _, _, c = x.shape
  if _patchify(kernel_hw, strides, pads):
    x = x[:, :ho * sh, :wo * sw]
    x = x.reshape(b, ho, sh, wo, sw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, ho, wo, kh * kw * c)
  assert kh * kw == 1, kernel_hw
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  return windows.tap(xp, 0, 0, strides, out_hw)


def _xla_weight_grad(kernel_hw, strides, pads) -> bool:
  """Whether a k×k kernel's own weight gradient (oneDNN's or XLA's) beats one
  im2col product: for every k×k kernel (k > 1) but a patchify stem, where
  im2col is a reshape."""
  return kernel_hw[0] * kernel_hw[1] > 1 and not _patchify(kernel_hw, strides, pads)


def _patchify(kernel_hw, strides, pads) -> bool:
  """A ViT/ConvNeXt stem: a k×k kernel (k > 1) at stride k, unpadded."""
  return (tuple(kernel_hw) == tuple(strides) and kernel_hw[0] * kernel_hw[1] > 1
          and all(p == (0, 0) for p in pads))


def _uses_onednn(x, w, strides, pads) -> bool:
  """oneDNN runs this convolution: float32, not a patchify stem."""
  return onednn.supports(x, w) and not _patchify(w.shape[:2], strides, pads)


def _xla_conv(x, w, strides, pads):
  return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, onednn_ok):
  """A convolution whose forward and input gradient run on oneDNN where
  ``onednn_ok`` (and :func:`_uses_onednn`), on XLA otherwise, and whose weight
  gradient is one im2col product, or for k×k kernels (:func:`_xla_weight_grad`)
  oneDNN's (:mod:`onednn_weight_grad`, where built) or XLA's."""
  if onednn_ok and _uses_onednn(x, w, strides, pads):
    return onednn.forward(x, w, strides, pads)
  return _xla_conv(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads, onednn_ok):
  return _conv(x, w, strides, pads, onednn_ok), (x, w)


def _conv_bwd(strides, pads, onednn_ok, residuals, g):
  x, w = residuals
  use_onednn = onednn_ok and _uses_onednn(x, w, strides, pads)
  if use_onednn:
    dx = onednn.input_grad(g, w, strides, pads, x.shape)
  else:
    dx = jax.vjp(lambda x_: _xla_conv(x_, w, strides, pads), x)[1](g)[0]
  kh, kw, cin, cout = w.shape
  if _xla_weight_grad((kh, kw), strides, pads):
    if use_onednn and onednn_weight_grad.worth_it(g.shape) and onednn_weight_grad.available():
      return dx, onednn_weight_grad.weight_grad(x, g, w.shape, strides, pads)
    return dx, jax.vjp(lambda w_: _xla_conv(x, w_, strides, pads), w)[1](g)[0]
  p = _patches(x, (kh, kw), strides, pads, g.shape[1:3]).reshape(-1, kh * kw * cin)
  if use_onednn:  # a 1×1 kernel (oneDNN never runs a patchify stem)
    dw = onednn.matmul(p, g.reshape(-1, cout), transpose_a=True)
  else:
    dw = jax.lax.dot_general(p, g.reshape(-1, cout), (((0,), (0,)), ((), ())),
                             preferred_element_type=jnp.float32)
  return dx, dw.reshape(kh, kw, cin, cout).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def cpu_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                             rhs_dilation=None, dimension_numbers=None,
                             feature_group_count=1, precision=None, *,
                             onednn_ok: bool = False, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` (the ``conv_general_dilated`` field of
  ``nn.Conv``) for the convolutions XLA:CPU runs slowly.

  * Ordinary convolutions: with ``onednn_ok``, the forward pass, the input
    gradient and a 1×1 kernel's gradient run on oneDNN
    (:mod:`bmqa_jax.models.image.onednn`, float32 only; 15–40 % faster than
    XLA's kernels per layer), otherwise on XLA. A k×k kernel's gradient is
    oneDNN's ``convolution_backward_weights`` where ``onednn_ok`` and
    :func:`onednn_weight_grad.available` (an FFI call built against the
    system's oneDNN; VGG-19 training 1.24× faster), else XLA's own (with
    YNNPACK's matrix products, `runtime.tune_cpu`, it beat an im2col product
    at every size of ResNet-50 and VGG-19: a 3×3 at 14 px with 512 channels
    35.6 against 63.2 ms); a 1×1 kernel's and a patchify stem's are one
    matrix product (there the "patches" are a reshape).
  * Depthwise convolutions: :func:`bmqa_jax.models.image.depthwise.depthwise_conv`
    (oneDNN's depthwise kernels with ``onednn_ok``, else shifted sums, instead
    of XLA:CPU's generic grouped-convolution loop).

  Same sums as XLA's convolution in another order (float32 differences ~1e-6
  relative). Falls back to ``lax.conv_general_dilated`` for dilation,
  precision settings, non-2-D inputs and groups that are neither 1 nor
  depthwise.
  """
  del dimension_numbers  # nn.Conv passes NHWC/HWIO for 2-D inputs
  cin, cout = lhs.shape[-1], rhs.shape[-1]
  one_per_group = feature_group_count == cin != 1 and rhs.shape[2] == 1 and cout == cin
  plain = (lhs.ndim != 4 or kwargs or precision is not None
           or any(d != 1 for d in (lhs_dilation or (1, 1)))
           or any(d != 1 for d in (rhs_dilation or (1, 1)))
           or not (feature_group_count == 1 or one_per_group))
  if plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=_NHWC,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple(tuple(int(v) for v in p) for p in padding)
  strides = tuple(int(s) for s in window_strides)
  if one_per_group:
    return depthwise.depthwise_conv(lhs, rhs, strides, pads, onednn_ok)
  return _conv(lhs, rhs, strides, pads, onednn_ok)


CONV_IMPLS = ('auto', 'onednn', 'gemm', 'xla')


def _cpu_kernels(conv_impl: str) -> bool:
  """Whether ``conv_impl`` (``config.model.conv_impl``) picks this module's
  CPU forms: ``'onednn'`` yes, ``'xla'`` no, ``'auto'`` and ``'gemm'`` on the
  CPU backend only (cuDNN is fast)."""
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r}: expected one of {CONV_IMPLS}')
  return conv_impl == 'onednn' or (
      conv_impl in ('auto', 'gemm') and jax.default_backend() == 'cpu')


def conv_general_dilated_for_backend(conv_impl: str = 'auto'):
  """The convolution for ``nn.Conv(conv_general_dilated=...)``:
  :func:`cpu_conv_general_dilated` where ``conv_impl`` picks the CPU forms,
  else None (XLA's own). ``'auto'`` and ``'onednn'`` run convolutions on
  oneDNN where :func:`onednn.available` (``'onednn'`` raises where it is
  not); ``'gemm'`` keeps to XLA's kernels, whose programs XLA's persistent
  compilation cache can store (small models, where compiling costs more
  than oneDNN saves)."""
  if not _cpu_kernels(conv_impl):
    return None
  return functools.partial(cpu_conv_general_dilated, onednn_ok=_onednn_ok(conv_impl))


def _onednn_ok(conv_impl: str) -> bool:
  """Whether ``conv_impl`` (one that picks the CPU forms) runs on oneDNN here;
  ``'onednn'`` raises where this process cannot."""
  ok = conv_impl in ('auto', 'onednn') and onednn.available()
  if conv_impl == 'onednn' and not ok:
    raise ValueError("conv_impl='onednn': this process cannot run oneDNN's "
                     'convolution (needs one x86 CPU device and a jaxlib with oneDNN)')
  return ok


def dot_general_for_backend(conv_impl: str = 'auto'):
  """The product for ``nn.Dense(dot_general=...)``: oneDNN matmuls
  (:func:`onednn.dense_dot_general`) where ``conv_impl`` runs convolutions on
  oneDNN, else None (``lax.dot_general``)."""
  if _cpu_kernels(conv_impl) and _onednn_ok(conv_impl):
    return onednn.dense_dot_general
  return None


def max_pool_for_backend(conv_impl: str = 'auto'):
  """``flax.linen.max_pool``, or where ``conv_impl`` picks the CPU forms the
  same pooling with a fused gradient (:mod:`bmqa_jax.models.image.pooling`)."""
  if not _cpu_kernels(conv_impl):
    return nn.max_pool

  def pool(x, window_shape, strides=None, padding='VALID'):
    pads = ((0, 0), (0, 0)) if padding == 'VALID' else tuple(tuple(p) for p in padding)
    return pooling.max_pool(x, tuple(window_shape), tuple(strides or (1, 1)), pads)
  return pool
