"""Sentencepiece tokenisation of quality descriptions.

The tokenizer is trained on the training split's texts (never on validation or
test text) and saved in the run's workdir, so evaluation and scoring reuse exactly
the vocabulary the model was trained with.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np
import sentencepiece as spm

PAD_ID = 0


class Tokenizer:
  """Wraps a sentencepiece model: text → fixed-length ids and a padding mask."""

  def __init__(self, model_path: str):
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"tokenizer model {model_path!r} does not exist")
    self.path = model_path
    self.truncated = 0
    self._sp = spm.SentencePieceProcessor(model_file=model_path)

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns int32 ids [N, max_len] (BOS first, truncated, PAD_ID padded) and mask.

    `self.truncated` counts the texts of this call that did not fit.
    """
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    self.truncated = 0
    for i, t in enumerate(texts):
      piece_ids = [self._sp.bos_id()] + self._sp.encode(t.lower())
      self.truncated += len(piece_ids) > max_len
      piece_ids = piece_ids[:max_len]
      ids[i, :len(piece_ids)] = piece_ids
    return ids, ids != PAD_ID

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if i > 2])

  def __getstate__(self):  # picklable for grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


def train(texts: Sequence[str], model_path: str, vocab_size: int,
          model_type: str = "unigram") -> Tokenizer:
  """Trains a tokenizer on `texts` and writes it atomically to `model_path`."""
  if not texts:
    raise ValueError("cannot train a tokenizer on no text")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([t.lower() for t in texts]), model_writer=buf,
      vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
      pad_id=PAD_ID, unk_id=1, bos_id=2, eos_id=-1, character_coverage=1.0,
      num_threads=1, minloglevel=2)
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  tmp = model_path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(buf.getvalue())
  os.replace(tmp, model_path)
  return Tokenizer(model_path)


def load_or_train(model_path: str, texts: Sequence[str], vocab_size: int) -> Tokenizer:
  if os.path.isfile(model_path):
    return Tokenizer(model_path)
  return train(texts, model_path, vocab_size)
