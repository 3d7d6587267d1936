"""Pieces shared by the image-encoder families: torch-matching initialisers,
stochastic depth, the exact GELU and the common output dict of every encoder.
(Their convolution and pooling ops: :mod:`.ops`.)"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.models.image import ops


# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu'): torchvision's
# convolution init for ResNet, VGG and EfficientNet.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# torch.nn.Linear's default init of the weight (kaiming_uniform with a=sqrt(5)),
# which is uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_default = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv_and_norm(module: nn.Module, momentum: float, epsilon: float):
  """(conv, norm) of the torchvision-style ConvNets (ResNet, MobileNetV2,
  EfficientNet): bias-free ``nn.Conv`` with torch's fan-out init and the
  backend's convolution (:func:`.ops.for_backend`), and ``nn.BatchNorm``
  (flax's ``momentum`` is 1 − torch's), both in ``module``'s ``dtype`` and
  ``param_dtype``."""
  conv = functools.partial(
    nn.Conv,
    use_bias=False,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
    kernel_init=kaiming_normal_fan_out,
    conv_general_dilated=ops.for_backend().conv_general_dilated,
  )
  norm = functools.partial(
    nn.BatchNorm,
    momentum=momentum,
    epsilon=epsilon,
    dtype=module.dtype,
    param_dtype=module.param_dtype,
  )
  return conv, norm


def encoder_outputs(
  module: nn.Module,
  pooled: jax.Array,
  tokens: jax.Array,
  *,
  head_name: str,
  head_init=nn.initializers.lecun_normal(),
  dropout_rate: float = 0.0,
  train: bool = False,
  stage_maps: Sequence[jax.Array] = (),
) -> dict[str, Any]:
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
  out = {"pooled": pooled.astype(jnp.float32), "tokens": tokens.astype(jnp.float32)}
  wanted = tuple(getattr(module, "levels", ()) or ())
  if wanted:
    out["levels"] = select_levels(stage_maps, wanted, type(module).__name__)
  if module.num_classes:
    x = pooled
    if dropout_rate:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
    head = nn.Dense(
      module.num_classes,
      dtype=module.dtype,
      param_dtype=module.param_dtype,
      kernel_init=head_init,
      name=head_name,
    )
    out["logits"] = head(x).astype(jnp.float32)
  return out


def select_levels(
  stage_maps: Sequence[jax.Array], wanted: Sequence[int], owner: str
) -> tuple[jax.Array, ...]:
  """The stage maps at indices ``wanted``, flattened to float32 ``[B, N, C]``.

  Multi-level features (as HyperIQA, DBCNN and TOPIQ read them): early stages
  keep the fine-grained noise and blur that the last one averages away.
  """
  bad = [i for i in wanted if not -len(stage_maps) <= i < len(stage_maps)]
  if bad:
    raise ValueError(
      f"{owner} has {len(stage_maps)} stages (levels 0.."
      f"{len(stage_maps) - 1}); asked for levels {list(wanted)}"
    )
  return tuple(
    stage_maps[i].reshape(stage_maps[i].shape[0], -1, stage_maps[i].shape[-1]).astype(jnp.float32)
    for i in wanted
  )


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, ``x · ½(1 + erf(x / √2))``: torch's ``nn.GELU()`` formula.

  ``jax.nn.gelu(approximate=False)`` computes the same function through
  ``erfc``, which XLA:CPU evaluates more slowly (ConvNeXt and ViT training
  steps: ``launch/benchmark.py``, docs/performance.md).
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
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
