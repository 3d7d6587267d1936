"""Recogniser input features: log-mel frames per utterance, and their cache.

``featurize`` wraps :func:`bmqa_jax.audio.log_mel` so that jit compiles a few
shapes only: the signal is reflect-padded exactly as ``log_mel(center=True)``
does, zero-padded to a multiple of ``bucket_samples``, transformed with
``center=False`` and cut back to ``num_frames`` — the same frames as the plain
call. Per-utterance mean/variance normalisation per mel bin (CMVN) follows,
which removes the channel's spectral tilt and loudness.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import numpy as np

from bmqa_jax import audio
from bmqa_jax.train_lib import workdir as workdir_lib

__all__ = ["featurize", "FeatureCache", "cached_features"]


@functools.lru_cache(maxsize=None)
def _jitted_log_mel(items: tuple):
  return jax.jit(functools.partial(audio.log_mel, center=False, **dict(items)))


def featurize(
  waveform: np.ndarray,
  *,
  sample_rate: int = audio.TARGET_SAMPLE_RATE,
  bucket_samples: int = 16000,
  normalize: bool = True,
  normalize_eps: float = 1e-5,
  **log_mel_kwargs,
) -> np.ndarray:
  """Log-mel frames ``[frames, n_mels]`` float32 of one mono waveform.

  Args:
    waveform: ``[T]`` float samples at ``sample_rate``.
    bucket_samples: pad length granularity (compiled shapes), not a result.
    normalize: subtract each mel bin's mean over the utterance and divide by
      its standard deviation (plus ``normalize_eps``).
    **log_mel_kwargs: passed to :func:`bmqa_jax.audio.log_mel` (window, hop,
      n_mels, ...); ``center`` is always True.
  """
  log_mel_kwargs.pop("center", None)
  waveform = np.asarray(waveform, np.float32)
  if waveform.ndim != 1:
    raise ValueError(f"waveform must be 1-D, got shape {waveform.shape}")
  sig = dict(
    window_seconds=log_mel_kwargs.get("window_seconds", 0.025),
    hop_seconds=log_mel_kwargs.get("hop_seconds", 0.010),
    n_fft=log_mel_kwargs.get("n_fft"),
  )
  _, _, n_fft = audio.frame_geometry(sample_rate, **sig)
  pad = n_fft // 2
  if waveform.size <= pad:
    waveform = np.pad(waveform, (0, pad + 1 - waveform.size))
  frames = int(audio.num_frames(waveform.size, sample_rate, center=True, **sig))
  padded = np.pad(waveform, (pad, pad), mode="reflect")
  total = -(-padded.size // bucket_samples) * bucket_samples
  padded = np.pad(padded, (0, total - padded.size))
  fn = _jitted_log_mel(tuple(sorted(dict(log_mel_kwargs, sample_rate=sample_rate).items())))
  feats = np.asarray(fn(padded))[:frames]
  if normalize:
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + normalize_eps)
  return feats.astype(np.float32)


class FeatureCache:
  """Features of many utterances, stored concatenated (float16) with offsets."""

  def __init__(self, features: np.ndarray, offsets: np.ndarray):
    self.features, self.offsets = features, offsets

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    return self.features[self.offsets[i] : self.offsets[i + 1]].astype(np.float32)

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  @classmethod
  def build(cls, arrays: list[np.ndarray]) -> "FeatureCache":
    lengths = np.array([len(a) for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    width = arrays[0].shape[1] if arrays else 0
    feats = (
      np.concatenate(arrays).astype(np.float16) if arrays else np.zeros((0, width), np.float16)
    )
    return cls(feats, offsets)


def _cache_key(paths: list[str], feature_kwargs: dict) -> str:
  h = hashlib.sha256(json.dumps(feature_kwargs, sort_keys=True).encode())
  for p in paths:
    st = os.stat(p)
    h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


def cached_features(
  paths: list[str], cache_dir: str | None, feature_kwargs: dict, progress=None
) -> FeatureCache:
  """Featurises audio files, reusing ``cache_dir/<key>.npz`` when present.

  The key hashes the feature settings and every file's path, size and mtime.
  """
  key = _cache_key(paths, feature_kwargs)
  cache_file = os.path.join(cache_dir, f"{key}.npz") if cache_dir else None
  if cache_file and os.path.exists(cache_file):
    with np.load(cache_file) as z:
      return FeatureCache(z["features"], z["offsets"])
  arrays = []
  for i, p in enumerate(paths):
    wav, _ = audio.read_audio(p, feature_kwargs.get("sample_rate", audio.TARGET_SAMPLE_RATE))
    arrays.append(featurize(wav, **feature_kwargs))
    if progress and (i + 1) % 100 == 0:
      progress(f"features {i + 1}/{len(paths)}")
  cache = FeatureCache.build(arrays)
  if cache_file:  # concurrent writers never collide
    os.makedirs(cache_dir, exist_ok=True)
    workdir_lib.atomic_write(
      cache_file, lambda f: np.savez(f, features=cache.features, offsets=cache.offsets)
    )
  return cache
