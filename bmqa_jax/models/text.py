"""Text encoders for the quality description, F_qsd (paper Eq. 3–4), by name.

`create(name, vocab_size, **kw)` returns a Linen module called as
`module.apply(variables, ids, mask, train=False)` with int32 `ids` `[B, L]` and a
boolean padding `mask` `[B, L]`, returning a dict with `tokens` `[B, L, D]`
(per-word features F_qsd(x_k), Eq. 3) and `pooled` `[B, D]` (the linear
combination of the word features, F_lc of Eq. 4, over the unpadded words).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class LinearCombination(nn.Module):
  """F_lc of Eq. 4: a fully-connected layer over the masked mean of word features."""

  width: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask):
    m = mask[..., None].astype(tokens.dtype)
    mean = (tokens * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return nn.Dense(self.width, dtype=self.dtype, name="lc")(mean)


class TransformerBlock(nn.Module):
  """Pre-LN Transformer layer: Eq. 3 with attention and MLP as the two projections."""

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    attn_mask = nn.make_attention_mask(mask, mask)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate,
        deterministic=not train)(y, y, mask=attn_mask)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(y)
    y = nn.gelu(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class TransformerEncoder(nn.Module):
  """'TransF' of the paper: token + learned position embeddings, `depth` layers."""

  vocab_size: int
  width: int = 512
  depth: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  max_len: int = 64
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask, train: bool = False):
    if ids.shape[1] > self.max_len:
      raise ValueError(f"text length {ids.shape[1]} exceeds max_len {self.max_len}")
    x = nn.Embed(self.vocab_size, self.width, param_dtype=self.param_dtype,
                 name="embed")(ids)
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, self.max_len, self.width), self.param_dtype)
    x = (x + pos[:, :ids.shape[1]]).astype(self.dtype)
    for i in range(self.depth):
      x = TransformerBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                           self.dtype, name=f"block{i}")(x, mask, train)
    x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
    pooled = LinearCombination(self.width, self.dtype, name="combine")(x, mask)
    return {"tokens": x.astype(jnp.float32), "pooled": pooled.astype(jnp.float32)}


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "transformer": TransformerEncoder,
}


def names() -> list[str]:
  return sorted(_REGISTRY)


def register(name: str, factory: Callable[..., nn.Module]) -> None:
  _REGISTRY[name] = factory


def create(name: str, vocab_size: int, **kw) -> nn.Module:
  if name not in _REGISTRY:
    raise KeyError(f"unknown text encoder {name!r}; known: {names()}")
  return _REGISTRY[name](vocab_size=vocab_size, **kw)
