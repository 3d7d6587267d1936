"""Pieces shared by the image-encoder families: torch-matching initialisers,
stochastic depth, the common output dict of every encoder, and the
convolution with a matrix-multiply weight gradient used on CPU."""

from __future__ import annotations

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): torchvision's
# convolution init for ResNet, VGG and EfficientNet.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# torch.nn.Linear's default init of the weight (kaiming_uniform with a=sqrt(5)),
# which is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def encoder_outputs(module: nn.Module, pooled: jax.Array, tokens: jax.Array, *,
                    head_name: str, head_init=nn.initializers.lecun_normal(),
                    dropout_rate: float = 0.0, train: bool = False) -> dict[str, jax.Array]:
  """The dict every encoder returns, in float32.

  Must be called from inside ``module``'s ``@nn.compact`` ``__call__``: when
  ``module.num_classes`` is set, it adds the classifier ``nn.Dense`` named
  ``head_name`` (torchvision's last ``Linear``), preceded by dropout at
  ``dropout_rate`` in training.

  Returns:
    ``pooled`` ``[B, D]`` (the vector the classifier sees), ``tokens``
    ``[B, N, C]`` and, with a classifier, ``logits`` ``[B, num_classes]``.
  """
  out = {'pooled': pooled.astype(jnp.float32), 'tokens': tokens.astype(jnp.float32)}
  if module.num_classes:
    x = pooled
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    head = nn.Dense(module.num_classes, dtype=module.dtype,
                    param_dtype=module.param_dtype, kernel_init=head_init,
                    name=head_name)
    out['logits'] = head(x).astype(jnp.float32)
  return out


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
  """im2col: ``[B, Ho, Wo, Kh·Kw·C]`` (tap-major, channel-minor) of the padded input."""
  (kh, kw), (sh, sw), (ho, wo) = kernel_hw, strides, out_hw
  b, _, _, c = x.shape
  if (kh, kw) == (sh, sw) and all(p == (0, 0) for p in pads):  # patchify (ViT, ConvNeXt stem)
    x = x[:, :ho * sh, :wo * sw]
    x = x.reshape(b, ho, sh, wo, sw, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, ho, wo, kh * kw * c)
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  taps = [jax.lax.slice(xp, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_gemm_wgrad(x, w, strides, pads, groups):
  return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                      feature_group_count=groups)


def _conv_fwd(x, w, strides, pads, groups):
  return _conv_gemm_wgrad(x, w, strides, pads, groups), (x, w)


def _conv_bwd(strides, pads, groups, residuals, g):
  x, w = residuals
  conv = lambda x_: jax.lax.conv_general_dilated(  # noqa: E731
      x_, w, strides, pads, dimension_numbers=_NHWC, feature_group_count=groups)
  dx = jax.vjp(conv, x)[1](g)[0]
  kh, kw, cin_g, cout = w.shape
  p = _patches(x, (kh, kw), strides, pads, g.shape[1:3])
  if groups == 1:
    dw = jax.lax.dot_general(p.reshape(-1, kh * kw * cin_g), g.reshape(-1, cout),
                             (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    dw = dw.reshape(kh, kw, cin_g, cout)
  else:  # depthwise (one input channel per group, as in EfficientNet and ConvNeXt)
    taps = p.reshape(p.shape[:3] + (kh * kw, cout)).astype(jnp.float32)
    dw = jnp.einsum('bhwtc,bhwc->tc', taps, g.astype(jnp.float32)).reshape(kh, kw, 1, cout)
  return dx, dw.astype(w.dtype)


_conv_gemm_wgrad.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated_gemm_wgrad(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                    rhs_dilation=None, dimension_numbers=None,
                                    feature_group_count=1, precision=None, **kwargs):
  """Drop-in ``lax.conv_general_dilated`` (the ``conv_general_dilated`` field of
  ``nn.Conv``) whose kernel gradient is one matrix product over im2col patches.

  Same forward and input gradient as XLA's; only the weight gradient is
  computed differently (same sums, another order). XLA:CPU lowers the
  weight-gradient convolution (batch and feature axes swapped) to a slow
  generic loop — 5–40× the forward's time — while the GEMM runs at the
  forward's speed (see the README benchmark). Falls back to the plain
  convolution for dilation, precision settings, other layouts and groups that
  are neither 1 nor depthwise.
  """
  del dimension_numbers  # nn.Conv passes NHWC/HWIO for 2-D inputs, checked below
  cin, cout = lhs.shape[-1], rhs.shape[-1]
  plain = (lhs.ndim != 4 or kwargs or precision is not None
           or any(d != 1 for d in (lhs_dilation or (1, 1)))
           or any(d != 1 for d in (rhs_dilation or (1, 1)))
           or feature_group_count not in (1, cin)
           or (feature_group_count == cin != 1 and (rhs.shape[2] != 1 or cout != cin)))
  if plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=_NHWC,
        feature_group_count=feature_group_count, precision=precision, **kwargs)
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple(tuple(int(v) for v in p) for p in padding)
  return _conv_gemm_wgrad(lhs, rhs, tuple(int(s) for s in window_strides), pads,
                          int(feature_group_count))


CONV_WEIGHT_GRAD_ENV = 'BMQA_CONV_WEIGHT_GRAD'


def conv_general_dilated_for_backend():
  """The convolution for ``nn.Conv(conv_general_dilated=...)``: the GEMM
  weight gradient on CPU, XLA's own elsewhere (cuDNN's is fast on GPU).
  The environment variable ``BMQA_CONV_WEIGHT_GRAD`` = ``gemm`` / ``xla``
  overrides the choice (read when the model is traced)."""
  choice = os.environ.get(CONV_WEIGHT_GRAD_ENV, 'auto')
  if choice not in ('auto', 'gemm', 'xla'):
    raise ValueError(f'{CONV_WEIGHT_GRAD_ENV}={choice!r}: expected auto, gemm or xla')
  if choice == 'auto':
    choice = 'gemm' if jax.default_backend() == 'cpu' else 'xla'
  return conv_general_dilated_gemm_wgrad if choice == 'gemm' else None
