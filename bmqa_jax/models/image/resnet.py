"""ResNet (He et al. 2016), layer for layer as torchvision's ``resnet18..152``.

The image encoder of the paper's Eq. 5–6 when ``img=resnet*``. torchvision's
"v1.5" layout: the stride of a Bottleneck sits on its 3×3 convolution, the
downsample branch is a strided 1×1 convolution followed by BatchNorm.

Submodule names follow torchvision's with ``.`` replaced by ``_`` inside a
stage (``layer2_0/conv1`` ↔ ``layer2.0.conv1``) so that the weight table in
:mod:`bmqa_jax.convert` is a plain rename.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops

Dtype = Any


class BasicBlock(nn.Module):
  """Two 3×3 convolutions with a residual connection (ResNet-18/34)."""

  features: int
  strides: int = 1
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    residual = x
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = self.norm(name="bn1")(y, use_running_average=not train)
    y = nn.relu(y)
    y = self.conv(self.features, (3, 3), 1, padding=1, name="conv2")(y)
    y = self.norm(name="bn2")(y, use_running_average=not train)
    if residual.shape != y.shape:
      residual = self.conv(self.features, (1, 1), self.strides, padding=0, name="downsample_0")(x)
      residual = self.norm(name="downsample_1")(residual, use_running_average=not train)
    return nn.relu(y + residual)


class Bottleneck(nn.Module):
  """1×1 → 3×3 (strided) → 1×1×4 convolutions with a residual (ResNet-50+)."""

  features: int
  strides: int = 1
  conv: Callable[..., nn.Module] = nn.Conv
  norm: Callable[..., nn.Module] = nn.BatchNorm

  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    residual = x
    out = self.features * self.expansion
    y = self.conv(self.features, (1, 1), 1, padding=0, name="conv1")(x)
    y = self.norm(name="bn1")(y, use_running_average=not train)
    y = nn.relu(y)
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name="conv2")(y)
    y = self.norm(name="bn2")(y, use_running_average=not train)
    y = nn.relu(y)
    y = self.conv(out, (1, 1), 1, padding=0, name="conv3")(y)
    y = self.norm(name="bn3")(y, use_running_average=not train)
    if residual.shape != y.shape:
      residual = self.conv(out, (1, 1), self.strides, padding=0, name="downsample_0")(x)
      residual = self.norm(name="downsample_1")(residual, use_running_average=not train)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """torchvision ``ResNet``: returns ``pooled`` (global average, pre-``fc``),
  ``tokens`` (``layer4`` output flattened, ``[B, H/32·W/32, C]``) and ``logits``
  when ``num_classes`` is set.

  Attributes:
    stage_sizes: blocks per stage (``[2, 2, 2, 2]`` for ResNet-18).
    block: :class:`BasicBlock` or :class:`Bottleneck`.
    widths: base width of each stage (torchvision: 64, 128, 256, 512).
    stem_width: output channels of the 7×7 stem convolution.
    num_classes: size of the ``fc`` classifier; ``None`` leaves it out.
    dtype: compute dtype of activations (e.g. ``jnp.bfloat16``).
    param_dtype: dtype of the parameters.
    bn_momentum: running-average momentum in Flax's convention (torch's 0.1 ↔ 0.9).
    bn_epsilon: BatchNorm epsilon (torch's default 1e-5).
  """

  stage_sizes: Sequence[int]
  block: type[nn.Module]
  widths: Sequence[int] = (64, 128, 256, 512)
  stem_width: int = 64
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  # Stages (layer1..layer4 = 0..3, strides 4..32) also returned as ``levels``.
  levels: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    conv, norm = layers.conv_and_norm(self, self.bn_momentum, self.bn_epsilon)
    x = jnp.asarray(images, self.dtype)
    x = conv(self.stem_width, (7, 7), 2, padding=3, name="conv1")(x)
    x = norm(name="bn1")(x, use_running_average=not train)
    x = nn.relu(x)
    x = ops.for_backend().max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    stage_maps = []
    for i, (n_blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(n_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block(width, strides, conv=conv, norm=norm, name=f"layer{i + 1}_{j}")(
          x, train=train
        )
      stage_maps.append(x)
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    pooled = jnp.mean(x, axis=(1, 2))
    return layers.encoder_outputs(
      self,
      pooled,
      tokens,
      head_name="fc",
      head_init=layers.torch_linear_default,
      stage_maps=stage_maps,
    )


VARIANTS = {
  "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock),
  "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock),
  "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck),
  "resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck),
  "resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=Bottleneck),
  # Small variant for tests and the CPU quickstart (same code path, 0.31 M params).
  "resnet_tiny": functools.partial(
    ResNet, stage_sizes=(1, 1, 1, 1), block=BasicBlock, widths=(16, 32, 64, 128), stem_width=16
  ),
}
