"""Speech input pipeline: manifest rows -> cached features -> padded batches.

A manifest (docs/interfaces.md, Manifest) is a CSV or JSONL file with an ``audio``
column (path relative to the manifest) and, for training, a ``text`` column
and a ``split`` column. Batches come from a ``grain.MapDataset`` indexed by
step, so a resumed run continues with exactly the batch it would have seen.

Utterances are grouped by length: each batch holds ``batch_size`` utterances
of similar length, padded to the smallest of ``frame_buckets`` that fits, and
labels to that bucket's longest transcript; jit therefore compiles one train
step per bucket only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import grain
import numpy as np

from bmqa_jax.speech import text as text_lib
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.speech.features import FeatureCache

__all__ = ["read_manifest", "resolve_audio", "SpeechSet", "batch_dataset"]


def read_manifest(path: str) -> list[dict]:
  """Rows of a CSV or JSONL manifest as dicts (strings as written)."""
  return manifest_lib.read_rows(path)[0]


def resolve_audio(manifest_path: str, rows: list[dict]) -> list[str]:
  """Absolute audio paths of ``rows`` (relative to the manifest's folder)."""
  base = os.path.dirname(os.path.abspath(manifest_path))
  out = []
  for n, row in enumerate(rows):
    rel = (row.get("audio") or "").strip()
    if not rel:
      raise ValueError(f"{manifest_path}: row {n + 2} has no 'audio' path")
    out.append(os.path.join(base, rel))
  return out


class SpeechSet:
  """Features, label ids and reference texts of one split."""

  def __init__(self, features: FeatureCache, texts: Sequence[str]):
    if len(features) != len(texts):
      raise ValueError(f"{len(features)} feature rows but {len(texts)} texts")
    self.features = features
    self.texts = [text_lib.normalize(t) for t in texts]
    self.labels = [text_lib.encode(t) for t in self.texts]

  def __len__(self) -> int:
    return len(self.texts)


def _bucket_of(lengths: np.ndarray, frame_buckets: Sequence[int]) -> np.ndarray:
  buckets = np.asarray(sorted(frame_buckets))
  idx = np.searchsorted(buckets, lengths, side="left")
  if np.any(idx >= len(buckets)):
    longest = int(lengths.max())
    raise ValueError(
      f"an utterance has {longest} frames, more than the largest "
      f"frame bucket {buckets[-1]}: add a larger bucket"
    )
  return buckets[idx]


class _Collate:
  """Pads one batch's utterances (indices) into arrays."""

  def __init__(
    self, data: SpeechSet, frame_buckets: Sequence[int], batch_size: int, label_multiple: int
  ):
    self.data, self.batch_size = data, batch_size
    lengths = data.features.lengths
    self.bucket = _bucket_of(lengths, frame_buckets)
    label_len = np.array([len(l) for l in data.labels])
    # Longest transcript per frame bucket: one label width per compiled shape.
    self.label_width = {}
    for b in np.unique(self.bucket):
      width = int(label_len[self.bucket == b].max(initial=1))
      self.label_width[int(b)] = -(-width // label_multiple) * label_multiple

  def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    indices = np.asarray(indices)
    frames = int(self.bucket[indices].max())
    width = self.label_width[frames]
    n_mels = self.data.features.features.shape[1]
    feats = np.zeros((self.batch_size, frames, n_mels), np.float32)
    lengths = np.zeros((self.batch_size,), np.int32)
    labels = np.zeros((self.batch_size, width), np.int32)
    label_lengths = np.zeros((self.batch_size,), np.int32)
    weights = np.zeros((self.batch_size,), np.float32)
    # A short last batch is filled with copies of its first utterance, weight 0.
    fill = np.concatenate([indices, np.full(self.batch_size - len(indices), indices[0])])
    for row, i in enumerate(fill):
      f = self.data.features[int(i)]
      feats[row, : len(f)] = f
      lengths[row] = len(f)
      lab = self.data.labels[int(i)]
      labels[row, : len(lab)] = lab
      label_lengths[row] = len(lab)
      weights[row] = 1.0 if row < len(indices) else 0.0
    return dict(
      features=feats, lengths=lengths, labels=labels, label_lengths=label_lengths, weights=weights
    )


def length_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
  """Index batches of similar length (sorted, then cut into ``batch_size``)."""
  order = np.argsort(lengths, kind="stable")
  return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def feature_batches(
  features: FeatureCache,
  *,
  batch_size: int,
  frame_buckets: Sequence[int],
  overflow_multiple: int = 256,
):
  """Yields ``(indices, features [batch_size, F, n_mels], lengths)`` over every
  utterance once, in length order (for inference). Utterances longer than the
  largest bucket are padded to a multiple of ``overflow_multiple`` frames."""
  largest = max(frame_buckets)
  for idx in length_batches(features.lengths, batch_size):
    longest = int(features.lengths[idx].max())
    if longest > largest:
      frames = -(-longest // overflow_multiple) * overflow_multiple
    else:
      frames = int(_bucket_of(np.array([longest]), frame_buckets)[0])
    fill = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
    feats = np.zeros((batch_size, frames, features.features.shape[1]), np.float32)
    lengths = np.zeros((batch_size,), np.int32)
    for row, i in enumerate(fill):
      f = features[int(i)]
      feats[row, : len(f)] = f
      lengths[row] = len(f)
    yield idx, feats, lengths


def batch_dataset(
  data: SpeechSet,
  *,
  batch_size: int,
  frame_buckets: Sequence[int],
  label_multiple: int = 8,
  seed: int = 0,
  shuffle: bool = True,
) -> grain.MapDataset:
  """Padded batches; with ``shuffle`` an endless, per-epoch shuffled sequence
  (index it by step), without it one pass in length order."""
  collate = _Collate(data, frame_buckets, batch_size, label_multiple)
  batches = length_batches(data.features.lengths, batch_size)
  ds = grain.MapDataset.source(batches)
  if shuffle:
    ds = ds.shuffle(seed=seed).repeat(None)
  return ds.map(collate)
