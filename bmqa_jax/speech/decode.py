"""CTC decoding: greedy (best path) and prefix beam search (Hannun et al. 2014).

Both take per-frame log-probabilities or logits (``[T, V]`` per utterance,
or batched with lengths) and return strings over ``text.VOCAB``.
"""

from __future__ import annotations

import collections

import numpy as np

from bmqa_jax.speech import text

__all__ = ["collapse", "greedy_decode", "prefix_beam_search", "beam_decode", "log_softmax"]

_NEG_INF = -np.inf


def log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  m = logits.max(axis=-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))


def _words(ids) -> str:
  """Text of label ids with leading, trailing and repeated spaces removed."""
  return " ".join(text.decode_ids(ids).split())


def collapse(ids, blank: int = text.BLANK) -> list[int]:
  """CTC's many-to-one map: merge repeated ids, then drop blanks."""
  out, prev = [], None
  for i in ids:
    i = int(i)
    if i != prev and i != blank:
      out.append(i)
    prev = i
  return out


def greedy_decode(logits, lengths=None, blank: int = text.BLANK) -> list[str]:
  """Best-path decoding of ``[B, T, V]`` logits, ``lengths`` valid frames each."""
  logits = np.asarray(logits)
  if logits.ndim != 3:
    raise ValueError(f"logits must be [B, T, V], got shape {logits.shape}")
  lengths = np.full(logits.shape[0], logits.shape[1]) if lengths is None else np.asarray(lengths)
  best = logits.argmax(axis=-1)
  return [_words(collapse(best[b, : lengths[b]], blank)) for b in range(logits.shape[0])]


def prefix_beam_search(
  log_probs, beam_size: int = 16, prune_log_prob: float = -12.0, blank: int = text.BLANK
) -> list[tuple[tuple[int, ...], float]]:
  """CTC prefix beam search over one utterance.

  Keeps, per prefix (collapsed labelling), the log-probability of all frame
  paths ending in blank and in non-blank, so paths that collapse to the same
  labelling are summed (unlike best-path decoding). With an unbounded beam
  and no pruning the scores are the exact labelling probabilities
  ``log p(l | x) = log sum_{paths -> l} prod_t y_t``.

  Args:
    log_probs: ``[T, V]`` per-frame log-probabilities (log-softmax output).
    beam_size: prefixes kept after each frame.
    prune_log_prob: characters with a frame log-probability below this are
      not extended at that frame (speed only); use ``-inf`` to disable.
    blank: the blank index.
  Returns:
    ``[(label ids, log-probability)]`` best first, at most ``beam_size``.
  """
  log_probs = np.asarray(log_probs, np.float64)
  if log_probs.ndim != 2:
    raise ValueError(f"log_probs must be [T, V], got shape {log_probs.shape}")
  beams = {(): (0.0, _NEG_INF)}  # prefix -> (log p ending blank, log p ending non-blank)
  lae = np.logaddexp
  for lp in log_probs:
    nxt = collections.defaultdict(lambda: [_NEG_INF, _NEG_INF])
    chars = [c for c in np.flatnonzero(lp >= prune_log_prob) if c != blank]
    for prefix, (pb, pnb) in beams.items():
      total = lae(pb, pnb)
      entry = nxt[prefix]
      entry[0] = lae(entry[0], total + lp[blank])
      last = prefix[-1] if prefix else None
      for c in chars:
        p = lp[c]
        extended = nxt[prefix + (int(c),)]
        if c == last:
          # A repeat extends the labelling only across a blank; without one
          # it collapses into the same prefix.
          extended[1] = lae(extended[1], pb + p)
          entry[1] = lae(entry[1], pnb + p)
        else:
          extended[1] = lae(extended[1], total + p)
    ranked = sorted(nxt.items(), key=lambda kv: lae(*kv[1]), reverse=True)
    beams = {k: tuple(v) for k, v in ranked[:beam_size]}
  return sorted(((k, float(lae(*v))) for k, v in beams.items()), key=lambda kv: kv[1], reverse=True)


def beam_decode(
  logits, lengths=None, beam_size: int = 16, prune_log_prob: float = -12.0, blank: int = text.BLANK
) -> list[str]:
  """Best labelling by prefix beam search for each of ``[B, T, V]`` logits."""
  logits = np.asarray(logits)
  if logits.ndim != 3:
    raise ValueError(f"logits must be [B, T, V], got shape {logits.shape}")
  lengths = np.full(logits.shape[0], logits.shape[1]) if lengths is None else np.asarray(lengths)
  out = []
  for b in range(logits.shape[0]):
    hyps = prefix_beam_search(
      log_softmax(logits[b, : lengths[b]]), beam_size, prune_log_prob, blank
    )
    out.append(_words(hyps[0][0]) if hyps else "")
  return out
