"""Sentencepiece tokenisation of quality descriptions.

The tokenizer is trained on the training split's texts (never on validation or
test text) and saved in the run's workdir, so evaluation and scoring reuse exactly
the vocabulary the model was trained with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Sequence

import numpy as np
import sentencepiece as spm

from bmqa_jax.train_lib import workdir as workdir_lib

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
      ids[i, : len(piece_ids)] = piece_ids
    return ids, ids != PAD_ID

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids if i > 2])

  def __getstate__(self):  # picklable for grain worker processes
    return {"path": self.path}

  def __setstate__(self, state):
    self.__init__(state["path"])


class TokenizerMismatchError(ValueError):
  """A saved tokenizer was trained on other texts or another vocabulary size."""


def _key(texts: Sequence[str], vocab_size: int, model_type: str) -> dict:
  """What a tokenizer is trained from: the texts (joined, in order) and options."""
  digest = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
  return dict(
    vocab_size=int(vocab_size), model_type=model_type, num_texts=len(texts), texts_sha256=digest
  )


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def train(
  texts: Sequence[str], model_path: str, vocab_size: int, model_type: str = "unigram"
) -> Tokenizer:
  """Trains a tokenizer on `texts` and writes it atomically to `model_path`, with
  the sidecar `<model_path>.json` recording what it was trained from."""
  if not texts:
    raise ValueError("cannot train a tokenizer on no text")
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter([t.lower() for t in texts]),
    model_writer=buf,
    vocab_size=vocab_size,
    model_type=model_type,
    hard_vocab_limit=False,
    pad_id=PAD_ID,
    unk_id=1,
    bos_id=2,
    eos_id=-1,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
  )
  os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
  model = buf.getvalue()
  key = dict(_key(texts, vocab_size, model_type), model_sha256=hashlib.sha256(model).hexdigest())
  # The model first: a sidecar always describes the model next to it (a crash
  # in between leaves a model without sidecar or with one of another model).
  workdir_lib.atomic_write(model_path, model)
  workdir_lib.atomic_write(model_path + ".json", json.dumps(key, indent=1))
  return Tokenizer(model_path)


def check(
  model_path: str, texts: Sequence[str], vocab_size: int, model_type: str = "unigram"
) -> None:
  """Raises TokenizerMismatchError when the sidecar of `model_path` records other
  training texts or options than these. No sidecar (a workdir of an older
  release) or no `texts`: nothing to compare, the model is accepted."""
  try:
    with open(model_path + ".json") as f:
      have = json.load(f)
  except FileNotFoundError:
    return
  except (OSError, ValueError) as e:
    raise TokenizerMismatchError(
      f"{model_path}.json (what tokenizer {model_path} was trained from) is unreadable: {e}"
    ) from None
  if not isinstance(have, dict) or have.get("model_sha256") != _sha256(model_path):
    raise TokenizerMismatchError(
      f"{model_path}.json does not describe {model_path} (the model was replaced "
      "after it was written); delete both to train the tokenizer again"
    )
  if not texts:
    return
  want = _key(texts, vocab_size, model_type)
  diff = [k for k in want if have.get(k) != want[k]]
  if diff:
    what = ", ".join(
      f"{k} {have.get(k)!r} there, {want[k]!r} now"
      if k != "texts_sha256"
      else f"the training texts differ (sha256 {str(have.get(k))[:12]} there, {want[k][:12]} now)"
      for k in diff
    )
    raise TokenizerMismatchError(
      f"tokenizer {model_path} was trained from something else than this run asks "
      f"for: {what}. Use a new workdir, or delete {model_path} and its .json to "
      "train it again (a model trained with it needs its own tokenizer)"
    )


def load_or_train(model_path: str, texts: Sequence[str], vocab_size: int) -> Tokenizer:
  """The tokenizer at `model_path` when it was trained from `texts` and
  `vocab_size` (see `check`), else a new one trained on them."""
  if os.path.isfile(model_path):
    check(model_path, texts, vocab_size)
    return Tokenizer(model_path)
  return train(texts, model_path, vocab_size)
