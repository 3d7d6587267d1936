"""Text encoders for the quality description, F_qsd (paper Eq. 3–4), by name.

`create(name, vocab_size, **kw)` returns a Linen module called as
`module.apply(variables, ids, mask, train=False)` with int32 `ids` `[B, L]` and a
boolean padding `mask` `[B, L]` (padding on the right, as the tokenizer writes
it), returning a dict with `tokens` `[B, L, D]` (per-word features F_qsd(x_k),
Eq. 3; zero at padded positions) and `pooled` `[B, D]` (F_lc of Eq. 4, the linear
combination of the word features, over the unpadded words).

The three families of the paper (Sec. 4.1.1, Table 1) are registered as
`bow` (Bag-of-Words), `gru` / `lstm` (the RNN; `bidirectional=True` for a
bidirectional one) and `transformer` ('TransF'). Every width and depth is a
keyword argument, set from `config.model.text.kwargs`.

Recurrent cells. `gru` uses `flax.linen.GRUCell`, which computes
r = σ(W_ir x + b_ir + W_hr h), z = σ(W_iz x + b_iz + W_hz h),
n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h:
the same function as `torch.nn.GRU` (the reset gate multiplies the hidden
projection *including* its bias b_hn in both), except that torch has a second
bias b_hr / b_hz on the hidden side of r and z; a torch GRU is therefore the flax
one with b_ir ← b_ir + b_hr and b_iz ← b_iz + b_hz. `lstm` uses
`flax.linen.OptimizedLSTMCell` (gates i, f, g, o as in torch, input kernels
without bias, one bias per gate on the hidden side = torch's b_ih + b_hh).
tests/test_text_encoders.py checks both against torch with copied weights.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def masked_reduce(tokens, mask, reduction: str = "mean"):
  """Sum or mean of `tokens` [B, L, D] over the positions where `mask` is True."""
  m = mask[..., None].astype(tokens.dtype)
  total = (tokens * m).sum(1)
  if reduction == "sum":
    return total
  if reduction == "mean":
    return total / jnp.maximum(m.sum(1), 1.0)
  raise ValueError(f"unknown reduction {reduction!r}; 'mean' or 'sum'")


class LinearCombination(nn.Module):
  """F_lc of Eq. 4: a fully-connected layer over the masked mean (or sum) of words."""

  width: int
  reduction: str = "mean"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask):
    return nn.Dense(self.width, dtype=self.dtype, name="lc")(
      masked_reduce(tokens, mask, self.reduction)
    )


def _outputs(tokens, mask, pooled) -> dict:
  tokens = tokens * mask[..., None].astype(tokens.dtype)
  return {"tokens": tokens.astype(jnp.float32), "pooled": pooled.astype(jnp.float32)}


class BagOfWordsEncoder(nn.Module):
  """'BoW' of the paper: order-free word features, then Eq. 4.

  Each word's embedding passes through `depth` residual MLP layers applied to
  that word alone (Eq. 3 with σ = GELU, F_lp^1 the MLP, F_lp^2 the identity and
  ⊕ addition), so the features carry no word order or context; `pooled` is F_lc
  over their masked mean or sum (`reduction`). The MLP acts per word rather than
  after the bag reduction so that the alignment (Eq. 8), which reads `tokens`,
  sees it.
  """

  vocab_size: int
  width: int = 512
  depth: int = 1
  mlp_dim: int = 1024
  reduction: str = "mean"  # of the bag: 'mean' | 'sum'
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, ids, mask, train: bool = False):
    x = nn.Embed(self.vocab_size, self.width, param_dtype=self.param_dtype, name="embed")(
      ids
    ).astype(self.dtype)
    for i in range(self.depth):
      y = nn.Dense(self.mlp_dim, dtype=self.dtype, name=f"mlp{i}_in")(x)
      y = nn.Dense(self.width, dtype=self.dtype, name=f"mlp{i}_out")(nn.gelu(y))
      y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
      x = nn.LayerNorm(dtype=self.dtype, name=f"ln{i}")(x + y)
    pooled = LinearCombination(self.width, self.reduction, self.dtype, name="combine")(x, mask)
    return _outputs(x, mask, pooled)


class RecurrentEncoder(nn.Module):
  """'RNN' of the paper: `depth` stacked GRU or LSTM layers over the embeddings.

  Eq. 3 with the recurrent cell as the two projections (input and hidden) and
  the gates as σ. Each layer runs over the unpadded words only (`seq_lengths`
  from the mask); with `bidirectional` a second layer reads the words backwards
  from the last unpadded one and the two outputs are concatenated, so the token
  width is `2 * width`. `pooled` is F_lc (Eq. 4) over the masked mean.
  """

  vocab_size: int
  cell: str = "gru"  # 'gru' | 'lstm'
  width: int = 512  # hidden size of each direction
  depth: int = 1
  embed_dim: int = 512
  bidirectional: bool = False
  dropout_rate: float = 0.0  # between layers, as torch's `dropout`
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _cell(self, name: str):
    kw = dict(features=self.width, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    if self.cell == "gru":
      return nn.GRUCell(**kw)
    if self.cell == "lstm":
      return nn.OptimizedLSTMCell(**kw)
    raise ValueError(f"unknown recurrent cell {self.cell!r}; 'gru' or 'lstm'")

  @nn.compact
  def __call__(self, ids, mask, train: bool = False):
    lengths = mask.astype(jnp.int32).sum(1)
    x = nn.Embed(self.vocab_size, self.embed_dim, param_dtype=self.param_dtype, name="embed")(
      ids
    ).astype(self.dtype)
    for i in range(self.depth):
      if i:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      # Cells named here hold the parameters ('layer0_fwd/ir/kernel', ...).
      fwd = nn.RNN(self._cell(f"layer{i}_fwd"))
      if self.bidirectional:
        bwd = nn.RNN(self._cell(f"layer{i}_bwd"))
        x = nn.Bidirectional(fwd, bwd)(x, seq_lengths=lengths)
      else:
        x = fwd(x, seq_lengths=lengths)
    pooled = LinearCombination(x.shape[-1], "mean", self.dtype, name="combine")(x, mask)
    return _outputs(x, mask, pooled)


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
      num_heads=self.num_heads,
      dtype=self.dtype,
      dropout_rate=self.dropout_rate,
      deterministic=not train,
    )(y, y, mask=attn_mask)
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
    x = nn.Embed(self.vocab_size, self.width, param_dtype=self.param_dtype, name="embed")(ids)
    pos = self.param(
      "pos_embed", nn.initializers.normal(0.02), (1, self.max_len, self.width), self.param_dtype
    )
    x = (x + pos[:, : ids.shape[1]]).astype(self.dtype)
    for i in range(self.depth):
      x = TransformerBlock(
        self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype, name=f"block{i}"
      )(x, mask, train)
    x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
    pooled = LinearCombination(self.width, "mean", self.dtype, name="combine")(x, mask)
    return _outputs(x, mask, pooled)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "bow": BagOfWordsEncoder,
  "gru": functools.partial(RecurrentEncoder, cell="gru"),
  "lstm": functools.partial(RecurrentEncoder, cell="lstm"),
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
