"""Corpus-level BLEU (Papineni et al. 2002), the captioner's BLEU-4 of Sec. 5.5.2.

BLEU = BP · exp(Σ_n w_n log p_n), with p_n the corpus's clipped n-gram
precision (each hypothesis n-gram counted at most as often as in the reference
that has most of it), uniform weights w_n = 1/N, and the brevity penalty
BP = min(1, exp(1 − r/c)) where c is the total hypothesis length and r the sum
of the reference lengths closest to each hypothesis length (the shorter one on
a tie). No smoothing: a zero precision gives BLEU 0. Inputs are token lists;
the result equals ``sacrebleu.corpus_bleu(..., tokenize='none',
smooth_method='none')`` on the space-joined tokens (tests/test_captioner.py).
"""

from __future__ import annotations

import collections
import math
from typing import Sequence


def ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(
  hypotheses: Sequence[Sequence[str]],
  references: Sequence[Sequence[Sequence[str]]],
  max_order: int = 4,
) -> dict:
  """BLEU in [0, 100] and its parts.

  Args:
    hypotheses: one token list per segment.
    references: per segment, a list of reference token lists (one or more).
    max_order: N (4 for BLEU-4).
  """
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
  matches = [0] * max_order
  totals = [0] * max_order
  hyp_len = ref_len = 0
  for hyp, refs in zip(hypotheses, references):
    if not refs:
      raise ValueError("a hypothesis has no reference")
    hyp_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    for n in range(1, max_order + 1):
      counts = ngrams(hyp, n)
      max_ref = collections.Counter()
      for r in refs:
        max_ref |= ngrams(r, n)
      matches[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
      totals[n - 1] += max(0, len(hyp) - n + 1)
  precisions = [m / t if t else 0.0 for m, t in zip(matches, totals)]
  if hyp_len == 0:
    bp = 0.0
  else:
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
  if min(precisions) <= 0.0:
    score = 0.0
  else:
    score = bp * math.exp(sum(math.log(p) for p in precisions) / max_order)
  return dict(
    bleu=100.0 * score,
    precisions=[100.0 * p for p in precisions],
    brevity_penalty=bp,
    hyp_len=hyp_len,
    ref_len=ref_len,
  )


def sacrebleu_reference(hypotheses, references) -> float | None:
  """sacrebleu's BLEU on the same tokens (None when sacrebleu is not installed).

  Every segment must have the same number of references (sacrebleu's layout).
  """
  try:
    import sacrebleu  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  k = {len(r) for r in references}
  if len(k) != 1:
    raise ValueError("sacrebleu needs the same number of references per segment")
  streams = [[" ".join(r[j]) for r in references] for j in range(k.pop())]
  return float(
    sacrebleu.corpus_bleu(
      [" ".join(h) for h in hypotheses], streams, tokenize="none", smooth_method="none", force=True
    ).score
  )
