"""Multimodal quality alignment, paper Eq. 7–8.

For each modality, features F [B, N, C] (image patches or words) are projected to
the alignment width, pooled by multi-head attention with a learned query (F_ms:
32 heads, scaled softmax σ(·) = Softmax(·/√d), key/query/value projection width
2048 in the paper), added to the input through a residual and normalised
(F̈ = LN(F_ms(F) + F)), then passed through a feed-forward layer with a second
residual and LayerNorm (F̂ = LN(F_fw(F̈) + F̈)). The residual "+ F" of a pooled
output needs a vector: we use the masked mean of the projected tokens.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class AttentivePool(nn.Module):
  """Eq. 7 (image) / Eq. 8 (description): tokens [B, N, C] → aligned vector [B, width]."""

  width: int = 1024
  num_heads: int = 32
  qkv_dim: int = 2048
  mlp_dim: int = 2048
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask=None):
    x = nn.Dense(self.width, dtype=self.dtype, name="in_proj")(tokens)
    if mask is None:
      mask = jnp.ones(tokens.shape[:2], bool)
    m = mask[..., None].astype(x.dtype)
    mean = (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, self.width))
    probe = jnp.broadcast_to(probe, (x.shape[0], 1, self.width)).astype(self.dtype)
    attended = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, qkv_features=self.qkv_dim, out_features=self.width,
        dtype=self.dtype, name="attention")(
            probe, x, mask=mask[:, None, None, :])[:, 0]
    y = nn.LayerNorm(dtype=self.dtype, name="ln_attention")(attended + mean)
    z = nn.Dense(self.mlp_dim, dtype=self.dtype, name="ff_in")(y)
    z = nn.Dense(self.width, dtype=self.dtype, name="ff_out")(nn.gelu(z))
    return nn.LayerNorm(dtype=self.dtype, name="ln_ff")(z + y).astype(jnp.float32)
