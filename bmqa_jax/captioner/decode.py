"""Greedy and beam-search decoding (Eq. 16) with per-word attention maps.

Both run the decoder step by step under ``jax.jit`` on a whole batch of images.
Beam search keeps ``beam_size`` hypotheses per image; a hypothesis that emitted
<eos> is finished and carried with its score unchanged. The best hypothesis by
total log-probability (divided by length**length_penalty) wins. With beam size 1
it is greedy decoding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.captioner import vocab as vocab_lib


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(model, variables, images):
  tokens = model.apply(variables, images, method=model.encode)
  carry, projected = model.apply(variables, tokens, method=model.start)
  return tokens, projected, carry


@functools.partial(jax.jit, static_argnums=(0,))
def _step(model, variables, tokens, projected, carry, prev):
  carry, logits, alpha = model.apply(variables, tokens, projected, carry, prev, method=model.step)
  return carry, jax.nn.log_softmax(logits), alpha


def beam_search(
  model, variables, images, beam_size: int, max_len: int, length_penalty: float = 0.0
):
  """Best word ids [B, T] (<eos>-terminated or cut at max_len), their
  attention maps [B, T, L] and log-probabilities [B], as numpy arrays.

  Args:
    model, variables: a ShowAttendTell and its variables (eval mode).
    images: [B, H, W, 3] normalised images.
    beam_size: hypotheses kept per image (1: greedy).
    max_len: most words generated (the <eos> included).
    length_penalty: final scores are log p / len**length_penalty.
  """
  b, k = images.shape[0], beam_size
  tokens, projected, carry = _encode(model, variables, images)
  rep = lambda x: jnp.repeat(x, k, axis=0)  # row b*k + j: beam j of image b
  tokens, projected = rep(tokens), rep(projected)
  carry = jax.tree.map(rep, carry)
  prev = np.full(b * k, vocab_lib.BOS, np.int32)
  scores = np.full((b, k), -np.inf)
  scores[:, 0] = 0.0  # all beams start identical: keep one
  finished = np.zeros((b, k), bool)
  lengths = np.zeros((b, k), np.int32)
  words = np.zeros((b, k, 0), np.int32)
  alphas = np.zeros((b, k, 0, tokens.shape[1]), np.float32)
  for _ in range(max_len):
    carry, logp, alpha = _step(model, variables, tokens, projected, carry, jnp.asarray(prev))
    logp = np.asarray(logp, np.float64).reshape(b, k, -1)
    v = logp.shape[-1]
    # A finished beam extends only with <pad> at no cost.
    logp[finished] = -np.inf
    logp[finished, vocab_lib.PAD] = 0.0
    total = (scores[..., None] + logp).reshape(b, k * v)
    top = np.argsort(-total, axis=1, kind="stable")[:, :k]
    src, word = top // v, (top % v).astype(np.int32)
    scores = np.take_along_axis(total, top, axis=1)
    was_done = np.take_along_axis(finished, src, axis=1)
    finished = was_done | (word == vocab_lib.EOS)
    lengths = np.take_along_axis(lengths, src, axis=1) + (~was_done)
    pick = lambda x: np.take_along_axis(x, src.reshape(b, k, *[1] * (x.ndim - 2)), 1)
    words = np.concatenate([pick(words), word[..., None]], axis=2)
    alphas = np.concatenate([pick(alphas), np.asarray(alpha).reshape(b, k, 1, -1)], axis=2)
    rows = (np.arange(b)[:, None] * k + src).reshape(-1)
    carry = jax.tree.map(lambda x: x[rows], carry)
    prev = word.reshape(-1)
    if finished.all():
      break
  final = scores / np.maximum(lengths, 1) ** length_penalty
  best = np.argmax(final, axis=1)
  sel = lambda x: x[np.arange(b), best]
  return sel(words), sel(alphas), sel(scores)


def greedy(model, variables, images, max_len: int):
  """Beam search with one beam: the most likely word at every step."""
  return beam_search(model, variables, images, 1, max_len)


def to_words(vocab: vocab_lib.Vocab, ids, alphas):
  """(words, attention maps [len(words) + 1, L]) of one sequence; the last map
  is the <eos> step's when the sequence ended."""
  words = vocab.decode_words(ids)
  return words, np.asarray(alphas[: len(words) + 1])
