"""Vision Transformer (Dosovitskiy et al. 2021), as torchvision's ``vit_b_32`` /
``vit_b_16``: patch-embedding convolution, class token, learned position
embedding, pre-LayerNorm encoder blocks (eps 1e-6), final LayerNorm; the
``pooled`` vector is the class token after the final LayerNorm.

The position embedding is sized for ``image_size`` (224 for the paper's
models); like torchvision, other input sizes are refused (create the model
with a different ``image_size`` to train at another resolution).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmqa_jax.models.image import layers
from bmqa_jax.models.image import ops

Dtype = Any


class SelfAttention(nn.Module):
  """``torch.nn.MultiheadAttention`` (batch_first, self-attention, no mask):
  one fused ``in_proj`` Dense giving q, k, v, softmax(q·kᵀ/√d_head)·v, then
  ``out_proj``."""

  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    head_dim = d // self.num_heads
    dense = functools.partial(
      nn.Dense,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.xavier_uniform(),
    )
    qkv = dense(3 * d, name="in_proj")(x).reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate, deterministic=not train)(weights)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, d)
    return dense(d, name="out_proj")(y)


class EncoderBlock(nn.Module):
  """Pre-norm block: x + Attn(LN(x)); then + MLP(LN(·)) with exact GELU."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(
      nn.LayerNorm, epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype
    )
    dense = functools.partial(
      nn.Dense,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.xavier_uniform(),
      bias_init=nn.initializers.normal(1e-6),
    )
    drop = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
    y = norm(name="ln_1")(x)
    y = SelfAttention(
      self.num_heads,
      self.attention_dropout_rate,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="self_attention",
    )(y, train=train)
    x = x + drop()(y)
    y = norm(name="ln_2")(x)
    y = dense(self.mlp_dim, name="mlp_0")(y)
    y = drop()(layers.gelu(y))
    y = drop()(dense(x.shape[-1], name="mlp_3")(y))
    return x + y


class VisionTransformer(nn.Module):
  """torchvision ``VisionTransformer`` (no representation layer).

  Returns ``pooled`` (class token after the final LayerNorm), ``tokens``
  (all ``1 + (image_size / patch_size)²`` tokens after it, class token first)
  and ``logits`` (``heads.head``) with ``num_classes``.
  """

  patch_size: int
  hidden_dim: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  image_size: int = 224
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  num_classes: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  # Encoder layers (0..num_layers-1) whose output tokens are also returned as
  # ``levels`` (before the final LayerNorm, class token first).
  levels: Sequence[int] = ()

  @nn.compact
  def __call__(self, images, train: bool = False):
    b, h, w, _ = images.shape
    if (h, w) != (self.image_size, self.image_size):
      raise ValueError(
        f"{type(self).__name__} expects {self.image_size}×{self.image_size} "
        f"images (its position embedding), got {h}×{w}; create it "
        f"with image_size={h} to use another size"
      )
    if self.image_size % self.patch_size:
      raise ValueError(
        f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
      )
    p = self.patch_size
    fan_in = 3 * p * p
    x = nn.Conv(
      self.hidden_dim,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.truncated_normal(math.sqrt(1 / fan_in)),
      conv_general_dilated=ops.for_backend().conv_general_dilated,
      name="conv_proj",
    )(jnp.asarray(images, self.dtype))
    x = x.reshape(b, -1, self.hidden_dim)
    cls = self.param(
      "class_token", nn.initializers.zeros, (1, 1, self.hidden_dim), self.param_dtype
    )
    x = jnp.concatenate(
      [jnp.broadcast_to(cls.astype(self.dtype), (b, 1, self.hidden_dim)), x], axis=1
    )
    pos = self.param(
      "pos_embedding",
      nn.initializers.normal(0.02),
      (1, x.shape[1], self.hidden_dim),
      self.param_dtype,
    )
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    stage_maps = []
    for i in range(self.num_layers):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.attention_dropout_rate,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f"encoder_layer_{i}",
      )(x, train=train)
      stage_maps.append(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.param_dtype, name="ln")(x)
    return layers.encoder_outputs(
      self, x[:, 0], x, head_name="head", head_init=nn.initializers.zeros, stage_maps=stage_maps
    )


_B = functools.partial(VisionTransformer, hidden_dim=768, num_layers=12, num_heads=12, mlp_dim=3072)

VARIANTS = {
  "vit_b32": functools.partial(_B, patch_size=32),
  "vit_b16": functools.partial(_B, patch_size=16),
  # Small variant for tests: 32 px images, 8 px patches, 2 layers of width 64.
  "vit_tiny": functools.partial(
    VisionTransformer,
    patch_size=8,
    hidden_dim=64,
    num_layers=2,
    num_heads=2,
    mlp_dim=128,
    image_size=32,
  ),
}
