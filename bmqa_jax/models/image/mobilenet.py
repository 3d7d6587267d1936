"""MobileNetV2 (Sandler et al. 2018) as torchvision's ``mobilenet_v2``
(``torchvision/models/mobilenetv2.py``).

``features``: a 3×3 stride-2 convolution to 32 channels, 17 inverted residual
blocks (``InvertedResidual``: [1×1 expand] → 3×3 depthwise → 1×1 linear
projection, each convolution followed by BatchNorm, ReLU6 after the first two,
a residual connection when stride 1 and width unchanged) in the table
``(t, c, n, s)`` of :data:`SETTINGS`, then a 1×1 convolution to 1280 channels;
every convolution is bias-free with BatchNorm (epsilon 1e-5, torch momentum
0.1) and ReLU6. ``classifier``: ``Dropout(0.2) → Linear(1280, num_classes)``.

Outputs: ``pooled`` is the global average of the 1280-channel map (the
vector before the classifier's ``Linear``), ``tokens`` that map flattened,
``logits`` with ``num_classes``.

Levels (``levels=(...)``): level ``l`` is the output of the last inverted
residual block of each resolution, strides 2, 4, 8, 16 and 32 for l = 0..4:
torchvision's ``features.1`` (16 channels), ``features.3`` (24),
``features.6`` (32), ``features.13`` (96) and ``features.17`` (320) — the
taps of torchvision's and timm's feature extractors. The 1280-channel head
map is ``tokens``.

Parameters are named after torchvision's modules (``features_4/dw_conv`` ↔
``features.4.conv.1.0``; :mod:`bmqa_jax.convert` holds the table).
``init='imagenet'`` (:mod:`.pretrained`) loads torchvision's own ImageNet file
``mobilenet_v2-b0353104.pth`` (top-1 71.9 %), classifier included.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image.efficientnet import make_divisible

Dtype = Any

# torchvision's inverted_residual_setting: expansion t, channels c, repeats n,
# stride s of the first repeat.
SETTINGS = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


def _classifier_init(key, shape, dtype=jnp.float32):
  """torchvision: normal(0, 0.01)."""
  return nn.initializers.normal(0.01)(key, shape, dtype)


class InvertedResidual(nn.Module):
  """torchvision's ``InvertedResidual`` (``conv.0`` expand unless ``t = 1``,
  then depthwise, projection and its BatchNorm)."""

  out_channels: int
  stride: int
  expand_ratio: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x, train: bool = False):
    in_ch = x.shape[-1]
    hidden = int(round(in_ch * self.expand_ratio))
    y = x
    if self.expand_ratio != 1:
      y = self.conv(hidden, (1, 1), padding=0, name="expand_conv")(y)
      y = relu6(self.norm(name="expand_bn")(y, use_running_average=not train))
    y = self.conv(
      hidden, (3, 3), self.stride, padding=1, feature_group_count=hidden, name="dw_conv"
    )(y)
    y = relu6(self.norm(name="dw_bn")(y, use_running_average=not train))
    y = self.conv(self.out_channels, (1, 1), padding=0, name="project_conv")(y)
    y = self.norm(name="project_bn")(y, use_running_average=not train)
    if self.stride == 1 and in_ch == self.out_channels:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  """torchvision ``MobileNetV2``.

  Attributes:
    width_mult: channel multiplier (torchvision's ``width_mult``; widths rounded
      to multiples of 8).
    settings: the ``(t, c, n, s)`` block table (:data:`SETTINGS`).
    stem_width, head_width: 32 and 1280 before the width multiplier (the head
      is never narrowed, as in torchvision).
    dropout_rate: dropout before the classifier (training only).
    levels: stages also returned as ``levels`` (0..4, see the module docstring).
  """

  width_mult: float = 1.0
  settings: Sequence[tuple[int, int, int, int]] = SETTINGS
  stem_width: int = 32
  head_width: int = 1280
  dropout_rate: float = 0.2
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9  # torch's momentum 0.1
  bn_epsilon: float = 1e-5
  levels: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    conv, norm = layers.conv_and_norm(self, self.bn_momentum, self.bn_epsilon)
    x = jnp.asarray(images, self.dtype)
    x = conv(
      make_divisible(self.stem_width * self.width_mult), (3, 3), 2, padding=1, name="stem_conv"
    )(x)
    x = relu6(norm(name="stem_bn")(x, use_running_average=not train))

    blocks = [
      (make_divisible(c * self.width_mult), s if i == 0 else 1, t)
      for t, c, n, s in self.settings
      for i in range(n)
    ]
    stage_maps = []
    for index, (width, stride, t) in enumerate(blocks, start=1):  # features.1 .. features.17
      x = InvertedResidual(width, stride, t, conv, norm, name=f"features_{index}")(x, train=train)
      if index == len(blocks) or blocks[index][1] != 1:  # last block of its resolution
        stage_maps.append(x)

    head = make_divisible(self.head_width * max(1.0, self.width_mult))
    x = conv(head, (1, 1), padding=0, name="head_conv")(x)
    x = relu6(norm(name="head_bn")(x, use_running_average=not train))
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    pooled = jnp.mean(x, axis=(1, 2))
    return layers.encoder_outputs(
      self,
      pooled,
      tokens,
      head_name="classifier",
      dropout_rate=self.dropout_rate,
      train=train,
      head_init=_classifier_init,
      stage_maps=stage_maps,
    )


VARIANTS = {
  "mobilenet_v2": functools.partial(MobileNetV2),
}
