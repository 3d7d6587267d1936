"""Show-Attend-Tell (Xu et al. 2015, "soft" attention), the paper's F_img2qsd.

Given the encoder's tokens a_1..a_L (``image.create(name)(...)['tokens']``),
each step t of the LSTM decoder computes

  e_ti = w_a^T tanh(W_a a_i + U_a h_{t-1}),   α_t = softmax_i(e_ti)      (attention)
  β_t = σ(f_β(h_{t-1})),  ẑ_t = β_t Σ_i α_ti a_i                         (gating scalar)
  (h_t, c_t) = LSTM([E y_{t-1}; ẑ_t], (h_{t-1}, c_{t-1}))
  p(y_t) ∝ exp(L_o(E y_{t-1} + L_h h_t + L_z ẑ_t))                        (deep output)

with h_0 = tanh(f_init,h(mean_i a_i)), c_0 = tanh(f_init,c(mean_i a_i)).
Training maximises the likelihood of the given description (Eq. 15) with teacher
forcing plus the doubly-stochastic penalty λ Σ_i (1 − Σ_t α_ti)² (Xu et al. Eq. 14).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bmqa_jax.models import image


class ShowAttendTell(nn.Module):
  """Image → word logits and attention weights (teacher forcing in ``__call__``)."""

  vocab_size: int
  encoder: str = "resnet_tiny"
  encoder_kwargs: tuple = ()  # (key, value) pairs for image.create (hashable)
  embed_dim: int = 128
  hidden_dim: int = 256
  attention_dim: int = 128
  dropout_rate: float = 0.3

  def setup(self):
    self.image_encoder = image.create(self.encoder, **dict(self.encoder_kwargs))
    self.embed = nn.Embed(self.vocab_size, self.embed_dim)
    self.init_h = nn.Dense(self.hidden_dim)
    self.init_c = nn.Dense(self.hidden_dim)
    self.att_tokens = nn.Dense(self.attention_dim)  # W_a
    self.att_hidden = nn.Dense(self.attention_dim, use_bias=False)  # U_a
    self.att_score = nn.Dense(1)  # w_a
    self.gate = nn.Dense(1)  # f_β
    self.cell = nn.OptimizedLSTMCell(self.hidden_dim)
    self.out_hidden = nn.Dense(self.embed_dim)  # L_h
    self.out_context = nn.Dense(self.embed_dim, use_bias=False)  # L_z
    self.out_logits = nn.Dense(self.vocab_size)  # L_o
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, images, train: bool = False):
    """Encoder tokens [B, L, C] (float32)."""
    return self.image_encoder(images, train=train)["tokens"].astype(jnp.float32)

  def start(self, tokens):
    """(carry, projected tokens): the LSTM state from the mean token, W_a a_i."""
    mean = tokens.mean(axis=1)
    carry = (jnp.tanh(self.init_c(mean)), jnp.tanh(self.init_h(mean)))
    return carry, self.att_tokens(tokens)

  def step(self, tokens, projected, carry, prev_ids, train: bool = False):
    """One decoder step: (new carry, logits [B, V], attention α [B, L])."""
    _, h = carry
    e = self.att_score(jnp.tanh(projected + self.att_hidden(h)[:, None]))[..., 0]
    alpha = jax.nn.softmax(e, axis=-1)
    beta = jax.nn.sigmoid(self.gate(h))
    context = beta * jnp.einsum("bl,blc->bc", alpha, tokens)
    emb = self.embed(prev_ids)
    carry, h = self.cell(carry, jnp.concatenate([emb, context], axis=-1))
    out = emb + self.out_hidden(h) + self.out_context(context)
    logits = self.out_logits(self.dropout(out, deterministic=not train))
    return carry, logits, alpha

  def __call__(self, images, inputs, train: bool = False):
    """Teacher forcing: ``inputs`` [B, T] (<bos> + words) → logits [B, T, V], α [B, T, L]."""
    tokens = self.encode(images, train)
    carry, projected = self.start(tokens)

    def body(mdl, carry, tokens, projected, ids):
      carry, logits, alpha = mdl.step(tokens, projected, carry, ids, train)
      return carry, (logits, alpha)

    scan = nn.scan(
      body,
      variable_broadcast="params",
      split_rngs={"params": False, "dropout": True},
      in_axes=(nn.broadcast, nn.broadcast, 1),
      out_axes=1,
    )
    _, (logits, alphas) = scan(self, carry, tokens, projected, inputs)
    return logits, alphas


def attention_penalty(alphas, mask):
  """Doubly-stochastic regulariser Σ_i (1 − Σ_t α_ti)² per sample [B] (valid steps)."""
  total = jnp.sum(alphas * mask[..., None], axis=1)
  return jnp.sum((1.0 - total) ** 2, axis=-1)


def caption_loss(logits, alphas, targets, penalty_weight: float):
  """(loss, metrics): token-mean cross entropy (Eq. 15) + λ · mean penalty."""
  mask = (targets != 0).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  n = jnp.maximum(mask.sum(), 1.0)
  ce = jnp.sum(ce * mask) / n
  pen = jnp.mean(attention_penalty(alphas, mask))
  return ce + penalty_weight * pen, dict(
    cross_entropy=ce, attention_penalty=pen, top5=topk_accuracy(logits, targets, 5)
  )


def topk_accuracy(logits, targets, k: int = 5):
  """Share of non-pad target words among the k highest logits (teacher forcing)."""
  mask = (targets != 0).astype(jnp.float32)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
  rank = jnp.sum(logits > target_logit, axis=-1)
  return jnp.sum((rank < k) * mask) / jnp.maximum(mask.sum(), 1.0)


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))


def from_config(cfg, vocab_size: int) -> ShowAttendTell:
  """The captioner a config describes (configs/captioner.py: config.model)."""
  m = cfg.model
  return ShowAttendTell(
    vocab_size=vocab_size,
    encoder=m.encoder,
    encoder_kwargs=tuple(
      sorted(  # hashable: JSON gives lists
        (k, tuple(v) if isinstance(v, list) else v) for k, v in dict(m.encoder_kwargs).items()
      )
    ),
    embed_dim=m.embed_dim,
    hidden_dim=m.hidden_dim,
    attention_dim=m.attention_dim,
    dropout_rate=m.dropout_rate,
  )


def init_variables(model: ShowAttendTell, cfg, rng) -> dict:
  size = cfg.input.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  inputs = jnp.zeros((1, cfg.vocab.max_len + 1), jnp.int32)
  return model.init({"params": rng, "dropout": rng}, images, inputs)
