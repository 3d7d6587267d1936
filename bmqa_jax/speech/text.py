"""Character vocabulary of the recogniser: CTC blank, space, apostrophe, a-z."""

from __future__ import annotations

import re

import numpy as np

__all__ = ["BLANK", "VOCAB", "VOCAB_SIZE", "normalize", "encode", "decode_ids"]

BLANK = 0
# Index 0 is the CTC blank (no character); the rest are the output characters.
VOCAB = ("<blank>", " ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
VOCAB_SIZE = len(VOCAB)
_INDEX = {c: i for i, c in enumerate(VOCAB) if i != BLANK}


def normalize(text: str) -> str:
  """Lower-cases and keeps only vocabulary characters; other characters
  (punctuation, digits, hyphens) become word breaks; spaces are collapsed."""
  text = text.lower().replace("\u2019", "'")
  text = re.sub(r"[^a-z' ]+", " ", text)
  return " ".join(text.split())


def encode(text: str) -> np.ndarray:
  """Label ids (int32) of ``normalize(text)``; never contains BLANK."""
  return np.array([_INDEX[c] for c in normalize(text)], np.int32)


def decode_ids(ids) -> str:
  """Characters of label ids (blanks skipped, no CTC collapsing)."""
  return "".join(VOCAB[int(i)] for i in ids if int(i) != BLANK)
