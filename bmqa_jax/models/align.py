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
import numpy as np

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
      num_heads=self.num_heads,
      qkv_features=self.qkv_dim,
      out_features=self.width,
      dtype=self.dtype,
      name="attention",
    )(probe, x, mask=mask[:, None, None, :])[:, 0]
    y = nn.LayerNorm(dtype=self.dtype, name="ln_attention")(attended + mean)
    z = nn.Dense(self.mlp_dim, dtype=self.dtype, name="ff_in")(y)
    z = nn.Dense(self.width, dtype=self.dtype, name="ff_out")(nn.gelu(z))
    return nn.LayerNorm(dtype=self.dtype, name="ln_ff")(z + y).astype(jnp.float32)


def map_shape(num_tokens: int, image_hw: tuple[int, int]) -> tuple[int, int]:
  """(H', W') of a convolutional token map of `num_tokens` = H'·W' tokens taken
  from an image of `image_hw`: the stride s (a power of two) with
  ceil(H/s)·ceil(W/s) or floor(H/s)·floor(W/s) tokens."""
  h, w = image_hw
  for s in (2**k for k in range(8)):
    for rnd in (np.ceil, np.floor):
      hh, ww = int(rnd(h / s)), int(rnd(w / s))
      if hh * ww == num_tokens:
        return hh, ww
  raise ValueError(
    f"{num_tokens} tokens are no convolutional map of a {h}×{w} "
    "image (token_grid needs a CNN tower, not a ViT)"
  )


def grid_statistics(tokens, image_hw: tuple[int, int], grid: int):
  """Per-cell mean and standard deviation of a token map (parameter-free).

  tokens [B, H'·W', C] (row-major map of an image of `image_hw`) → [B, g², 2C]:
  the map is cut into a `grid`×`grid` array of cells (as even as the size
  allows) and each cell gives the mean and the standard deviation of its
  tokens. First- and second-order statistics of early feature maps are what
  noise and blur change; the grid keeps where they occur for the attentive
  pooling of Eq. 7, and the size no longer depends on the input resolution.
  """
  hh, ww = map_shape(tokens.shape[1], image_hw)
  if hh < grid or ww < grid:
    raise ValueError(f"a {hh}×{ww} token map is smaller than token_grid={grid}")
  stats = []
  for cell in grid_cells(tokens, image_hw, grid):
    mean = cell.mean((1, 2))
    var = jnp.maximum((cell * cell).mean((1, 2)) - mean * mean, 0.0)
    stats.append(jnp.concatenate([mean, jnp.sqrt(var + 1e-6)], -1))
  return jnp.stack(stats, 1)


def grid_cells(tokens, image_hw: tuple[int, int], grid: int) -> list:
  """The `grid`×`grid` cells of a token map [B, H'·W', C] of an image of
  `image_hw`, row by row, each [B, h, w, C] (as even as the size allows)."""
  b, n, c = tokens.shape
  hh, ww = map_shape(n, image_hw)
  x = tokens.reshape(b, hh, ww, c)
  ys = np.linspace(0, hh, grid + 1).round().astype(int)
  xs = np.linspace(0, ww, grid + 1).round().astype(int)
  return [x[:, ys[i] : ys[i + 1], xs[j] : xs[j + 1]] for i in range(grid) for j in range(grid)]
