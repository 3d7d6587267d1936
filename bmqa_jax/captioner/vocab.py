"""Word-level vocabulary of the quality descriptions.

Show-Attend-Tell predicts words, and the paper's top-5 accuracy and BLEU-4 are
word-level measures, so the captioner uses its own word vocabulary built from
the training descriptions (not the BMQA run's sentencepiece pieces, which
would make "top-5 word accuracy" a sub-word accuracy). Punctuation marks are
tokens of their own so that a generated description reads like the given ones.
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Sequence

import numpy as np

from bmqa_jax.train_lib import workdir as workdir_lib

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def tokenize(text: str) -> list[str]:
  """Lower-cased words and punctuation marks: 'A dim, blue car.' → [a, dim, ',', ...]."""
  return _TOKEN.findall(text.lower())


def detokenize(words: Sequence[str]) -> str:
  """Joins tokens, attaching punctuation to the word before it."""
  return re.sub(r" ([,.;:!?])", r"\1", " ".join(words))


class Vocab:
  """Words ↔ ids; ids 0–3 are <pad>, <bos>, <eos>, <unk>."""

  def __init__(self, words: Sequence[str]):
    self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
    self.index = {w: i for i, w in enumerate(self.words)}

  def __len__(self) -> int:
    return len(self.words)

  @classmethod
  def build(cls, texts: Sequence[str], min_count: int) -> "Vocab":
    """Words seen at least `min_count` times in `texts`, most frequent first."""
    counts = collections.Counter(w for t in texts for w in tokenize(t))
    return cls(
      sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    )

  def save(self, path: str) -> None:
    workdir_lib.atomic_write(path, json.dumps(self.words[len(SPECIALS) :]))

  @classmethod
  def load(cls, path: str) -> "Vocab":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"captioner vocabulary {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
      return cls(json.load(f))

  def encode(self, texts: Sequence[str], max_len: int) -> np.ndarray:
    """int32 [N, max_len + 2]: <bos> words (cut at max_len) <eos>, <pad>-padded."""
    out = np.full((len(texts), max_len + 2), PAD, np.int32)
    for i, t in enumerate(texts):
      ids = [self.index.get(w, UNK) for w in tokenize(t)][:max_len]
      out[i, : len(ids) + 2] = [BOS] + ids + [EOS]
    return out

  def decode_words(self, ids: Sequence[int]) -> list[str]:
    """Words of one generated sequence, up to the first <eos>; no specials."""
    words = []
    for i in ids:
      i = int(i)
      if i == EOS:
        break
      if i not in (PAD, BOS):
        words.append(self.words[i])
    return words
