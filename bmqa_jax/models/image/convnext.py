"""ConvNeXt (Liu et al. 2022), as torchvision's ``convnext_tiny/small/base``:
4×4/4 patchify stem + LayerNorm, four stages of ConvNeXt blocks (7×7
depthwise conv → LayerNorm → 4× MLP with exact GELU → layer scale →
stochastic depth → residual) separated by LayerNorm + 2×2/2 convolutions.
``pooled`` is the global average after the classifier's LayerNorm (torchvision's
``classifier[:2]``). All LayerNorms use eps 1e-6.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops

Dtype = Any

_trunc_normal_002 = nn.initializers.truncated_normal(0.02)


class CNBlock(nn.Module):
  """torchvision ``CNBlock``."""

  stochastic_depth_rate: float
  layer_scale_init: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dim = x.shape[-1]
    dense = functools.partial(
      nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_trunc_normal_002
    )
    y = nn.Conv(
      dim,
      (7, 7),
      padding=3,
      feature_group_count=dim,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_trunc_normal_002,
      conv_general_dilated=ops.for_backend().conv_general_dilated,
      name="dwconv",
    )(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="norm")(y)
    y = layers.gelu(dense(4 * dim, name="pwconv1")(y))
    y = dense(dim, name="pwconv2")(y)
    scale = self.param(
      "layer_scale", nn.initializers.constant(self.layer_scale_init), (dim,), self.param_dtype
    )
    y = y * scale.astype(self.dtype)
    return layers.StochasticDepth(self.stochastic_depth_rate)(y, train=train) + x


class ConvNeXt(nn.Module):
  """torchvision ``ConvNeXt``.

  Attributes:
    depths: blocks per stage.
    widths: channels per stage.
    stochastic_depth_rate: drop probability of the last block; block ``i`` of
      ``n`` drops with ``rate · i / (n − 1)`` (torchvision's schedule; its
      defaults are 0.1 tiny, 0.4 small, 0.5 base).
  """

  depths: Sequence[int]
  widths: Sequence[int]
  stochastic_depth_rate: float = 0.0
  layer_scale_init: float = 1e-6
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Stages (0..3, strides 4..32) also returned as ``levels``.
  levels: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    conv = functools.partial(
      nn.Conv,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=_trunc_normal_002,
      padding="VALID",
      conv_general_dilated=ops.for_backend().conv_general_dilated,
    )
    norm = functools.partial(
      nn.LayerNorm, epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype
    )
    x = conv(self.widths[0], (4, 4), strides=(4, 4), name="stem_conv")(
      jnp.asarray(images, self.dtype)
    )
    x = norm(name="stem_norm")(x)
    total = sum(self.depths)
    index = 0
    stage_maps = []
    for i, (depth, width) in enumerate(zip(self.depths, self.widths)):
      if i > 0:
        x = norm(name=f"downsample{i}_norm")(x)
        x = conv(width, (2, 2), strides=(2, 2), name=f"downsample{i}_conv")(x)
      for j in range(depth):
        rate = self.stochastic_depth_rate * index / max(total - 1, 1)
        x = CNBlock(
          rate,
          self.layer_scale_init,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"stage{i}_block{j}",
        )(x, train=train)
        index += 1
      stage_maps.append(x)
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    pooled = norm(name="head_norm")(jnp.mean(x, axis=(1, 2)))
    return layers.encoder_outputs(
      self, pooled, tokens, head_name="head", head_init=_trunc_normal_002, stage_maps=stage_maps
    )


VARIANTS = {
  "convnext_tiny": functools.partial(
    ConvNeXt, depths=(3, 3, 9, 3), widths=(96, 192, 384, 768), stochastic_depth_rate=0.1
  ),
  "convnext_small": functools.partial(
    ConvNeXt, depths=(3, 3, 27, 3), widths=(96, 192, 384, 768), stochastic_depth_rate=0.4
  ),
  "convnext_base": functools.partial(
    ConvNeXt, depths=(3, 3, 27, 3), widths=(128, 256, 512, 1024), stochastic_depth_rate=0.5
  ),
  # Small variant for tests ('convnext_tiny' is taken by the paper-size model):
  # one block per stage, widths 16..128.
  "convnext_mini": functools.partial(ConvNeXt, depths=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
}
