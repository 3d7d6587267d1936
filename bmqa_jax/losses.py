"""Losses of BMQA: cosine similarity (Eq. 9), symmetric InfoNCE (Eq. 11–13),
MSE (Eq. 14), and the pretraining strategies CL and RE of stage PT (Table 2 f–g)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cosine_similarity_matrix(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
  """D_cos of Eq. 9 for every pair: [B, D] × [B, D] → [B, B], entry (i, j) = cos(a_i, b_j)."""
  a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
  b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
  return a @ b.T


def symmetric_info_nce(
  img: jax.Array, txt: jax.Array, temperature: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Symmetric InfoNCE of Eq. 11–13.

  P_img(i, j) (Eq. 11) is a softmax over the descriptions k of the batch of
  D_cos(F̂_img(i), F̂_aud(k)) / τ, and P_aud(j, i) (Eq. 12) the softmax over the
  images. Eq. 13 maximises the likelihood of the matching pairs in both
  directions; we minimise its negative log-likelihood averaged over the batch,
  −(1/2B) Σ_i [log P_img(i, i) + log P_aud(i, i)] (the form in which Eq. 13's
  joint likelihood is optimised in practice, as in CLIP).

  Args:
    img, txt: aligned features [B, D] of matching pairs (row i with row i).
    temperature: τ (scalar).
    weights: optional [B] mask of valid rows (padded rows take no part, neither
      as positives nor as negatives).
  """
  logits = cosine_similarity_matrix(img, txt) / temperature
  if weights is None:
    weights = jnp.ones(img.shape[0], logits.dtype)
  valid = weights > 0
  neg_inf = jnp.finfo(logits.dtype).min
  logits_i2t = jnp.where(valid[None, :], logits, neg_inf)
  logits_t2i = jnp.where(valid[:, None], logits, neg_inf)
  # The matching pairs' logits, as a masked sum rather than jnp.diagonal, which
  # lowers to a conditional around a gather: XLA:CPU runs a conditional's
  # collectives out of order with the step's other collectives, so that the
  # devices of one process waited at different ones (an all-gather against an
  # all-reduce) until its 40 s rendezvous deadline aborted the run.
  diag = jnp.sum(logits * jnp.eye(logits.shape[0], dtype=logits.dtype), axis=1)
  log_p_img = diag - jax.nn.logsumexp(logits_i2t, axis=1)
  log_p_aud = diag - jax.nn.logsumexp(logits_t2i, axis=0)
  per_pair = -(log_p_img + log_p_aud) / 2.0
  return jnp.sum(per_pair * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def mse(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """Eq. 14: mean squared error between predicted scores and MOS."""
  err = (pred - target) ** 2
  if weights is None:
    return jnp.mean(err)
  return jnp.sum(err * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def multilabel_sigmoid_ce(
  logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
  """Pretraining strategy CL (Table 2 f): one binary cross-entropy per category.

  −[y log σ(z) + (1 − y) log(1 − σ(z))] summed over the categories and averaged
  over the batch (rows weighted by `weights` when given).
  """
  per_class = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  return _weighted_mean(per_class.sum(-1), weights)


def masked_pixel_mse(pred: jax.Array, target: jax.Array, pixel_mask: jax.Array) -> jax.Array:
  """Pretraining strategy RE (Table 2 g), image side: MSE over the blanked pixels.

  `pred`, `target` [B, H, W, C]; `pixel_mask` [B, H, W] True where the input was
  blanked; the mean runs over those pixels and the channels.
  """
  m = pixel_mask[..., None].astype(pred.dtype)
  err = ((pred - target) ** 2 * m).sum()
  return err / jnp.maximum(m.sum() * pred.shape[-1], 1.0)


def masked_token_ce(logits: jax.Array, targets: jax.Array, word_mask: jax.Array) -> jax.Array:
  """Pretraining strategy RE (Table 2 g), text side: masked-word cross-entropy.

  `logits` [B, L, V], `targets` [B, L] the original ids, `word_mask` [B, L]
  True at the replaced words; the mean runs over those words.
  """
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  m = word_mask.astype(nll.dtype)
  return (nll * m).sum() / jnp.maximum(m.sum(), 1.0)


def _weighted_mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return jnp.mean(x)
  return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1.0)
