"""Audio front end for the speech recogniser (paper Eq. 2: audio -> words).

``read_audio`` loads WAV/FLAC (any sample rate, mono or multi-channel) as mono
float32 at 16 kHz; ``log_mel`` computes log-mel filterbank features in JAX
(framing, window, real FFT, power spectrum, mel filterbank, log), the input
of DeepSpeech2-style recognisers.
"""

from __future__ import annotations

import os
import struct
from math import gcd

import jax.numpy as jnp
import numpy as np
import soundfile
from scipy import signal

__all__ = [
  "AudioReadError",
  "AudioFileError",
  "TARGET_SAMPLE_RATE",
  "check_wav",
  "read_audio",
  "resample",
  "mel_filterbank",
  "frame_geometry",
  "num_frames",
  "log_mel",
]

TARGET_SAMPLE_RATE = 16000


class AudioReadError(ValueError):
  """An audio file is missing, unreadable or empty (the message names it)."""


AudioFileError = AudioReadError  # the same error under the name files use

# A RIFF/data size a streaming writer leaves when it cannot seek back to fill it
# in (ffmpeg, sox to a pipe): the data then runs to the end of the file.
_UNKNOWN_SIZES = (0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000)
_PCM_TAGS = (1, 3, 0xFFFE)  # PCM, IEEE float, WAVE_FORMAT_EXTENSIBLE


def check_wav(path: str) -> None:
  """Checks a RIFF WAVE file's header against its size.

  libsndfile reads a truncated WAV as the samples that are there, without a
  word; this raises AudioReadError naming the file when the data chunk is
  shorter than its header declares, a chunk before it runs past the end, the
  RIFF size exceeds the file, the `fmt ` chunk is missing or inconsistent, or
  PCM data is not a whole number of frames. Files that are not RIFF WAVE
  (FLAC, RF64, ...) are left to the decoder.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return
    e = "<" if head[:4] == b"RIFF" else ">"
    bad = lambda why: AudioReadError(f"audio file {path} is truncated or corrupt: {why}")
    fmt, pos = None, 12
    while True:
      chunk = f.read(8)
      if len(chunk) < 8:
        raise bad("no `data` chunk" if fmt else "no `fmt ` chunk")
      cid, n = chunk[:4], struct.unpack(e + "I", chunk[4:])[0]
      pos += 8
      if cid == b"data":
        break
      if pos + n > size:
        raise bad(
          f"chunk {cid.decode('latin-1')!r} at byte {pos - 8} declares {n} "
          f"bytes, only {size - pos} follow"
        )
      body = f.read(n)
      if cid == b"fmt ":
        if n < 16:
          raise bad(f"`fmt ` chunk of {n} bytes (at least 16)")
        fmt = struct.unpack(e + "HHIIHH", body[:16])
      pos += n + (n & 1)
      f.seek(pos)
  if fmt is None:
    raise bad("the `data` chunk comes before any `fmt ` chunk")
  tag, channels, rate, _, align, bits = fmt
  if channels == 0 or rate == 0 or align == 0:
    raise bad(f"`fmt ` declares {channels} channel(s), {rate} Hz, block align {align}")
  if tag in _PCM_TAGS and align != channels * ((bits + 7) // 8):
    raise bad(f"block align {align} does not match {channels} channel(s) of {bits} bits")
  have = size - pos
  if n in _UNKNOWN_SIZES and n > have:
    n = have - have % align if tag in _PCM_TAGS else have
  if n > have:
    raise bad(
      f"its data chunk declares {n} bytes ({n // align} frames at {rate} Hz), "
      f"the file holds {have} ({have // align} frames)"
    )
  if tag in _PCM_TAGS and n % align:
    raise bad(f"data chunk of {n} bytes is not a whole number of {align}-byte frames")
  riff = struct.unpack(e + "I", head[4:8])[0]
  if riff not in _UNKNOWN_SIZES and riff + 8 > size + 1:  # +1: a missing pad byte
    raise bad(f"its RIFF header declares {riff + 8} bytes, the file has {size}")


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
  """Polyphase resampling along the last axis (scipy's Kaiser-windowed FIR)."""
  if orig_rate <= 0 or new_rate <= 0:
    raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
  if orig_rate == new_rate:
    return waveform
  g = gcd(orig_rate, new_rate)
  out = signal.resample_poly(waveform, new_rate // g, orig_rate // g, axis=-1)
  return out.astype(waveform.dtype, copy=False)


def read_audio(path: str, sample_rate: int = TARGET_SAMPLE_RATE) -> tuple[np.ndarray, int]:
  """Reads an audio file as mono float32 in [-1, 1] at ``sample_rate``.

  Channels are averaged; other rates are resampled with a polyphase filter.

  Returns:
    ``(waveform [T] float32, sample_rate)``.
  Raises:
    AudioReadError: the file is missing, not a readable audio file, holds no
      samples, or is a WAV whose header and size disagree (:func:`check_wav`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise AudioReadError(f"audio file not found: {path}")
  check_wav(path)
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
    raise AudioReadError(f"cannot read audio file {path}: {e}") from e
  if data.shape[0] == 0 or data.shape[1] == 0:
    raise AudioReadError(f"audio file has no samples: {path}")
  if not np.all(np.isfinite(data)):
    raise AudioReadError(f"audio file has non-finite samples: {path}")
  mono = data.mean(axis=1, dtype=np.float32)
  return resample(mono, int(rate), sample_rate), sample_rate


def _hz_to_mel(hz: np.ndarray, mel_scale: str) -> np.ndarray:
  hz = np.asarray(hz, np.float64)
  if mel_scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  # Slaney (Auditory Toolbox): linear below 1 kHz, logarithmic above.
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(
    hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp
  )


def _mel_to_hz(mel: np.ndarray, mel_scale: str) -> np.ndarray:
  mel = np.asarray(mel, np.float64)
  if mel_scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(
    mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
  )


def mel_filterbank(
  sample_rate: int,
  n_fft: int,
  n_mels: int,
  f_min: float = 0.0,
  f_max: float | None = None,
  mel_scale: str = "slaney",
  norm: str | None = "slaney",
) -> np.ndarray:
  """Triangular mel filters ``[n_fft // 2 + 1, n_mels]`` (float32).

  Args:
    mel_scale: ``"slaney"`` (librosa's default) or ``"htk"``.
    norm: ``"slaney"`` scales each filter to unit area (2 / bandwidth), None
      leaves peaks at 1.
  """
  if mel_scale not in ("slaney", "htk"):
    raise ValueError(f"mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
  if norm not in ("slaney", None):
    raise ValueError(f"norm must be 'slaney' or None, got {norm!r}")
  f_max = sample_rate / 2 if f_max is None else f_max
  if not 0 <= f_min < f_max <= sample_rate / 2:
    raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
  fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  mel_pts = np.linspace(_hz_to_mel(f_min, mel_scale), _hz_to_mel(f_max, mel_scale), n_mels + 2)
  hz_pts = _mel_to_hz(mel_pts, mel_scale)
  widths = np.diff(hz_pts)
  ramps = hz_pts[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, n_freq]
  if norm == "slaney":
    weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
  return weights.T.astype(np.float32)


def frame_geometry(
  sample_rate: int, window_seconds: float, hop_seconds: float, n_fft: int | None
) -> tuple[int, int, int]:
  """(window, hop, n_fft) in samples; n_fft defaults to the next power of 2."""
  win = int(round(window_seconds * sample_rate))
  hop = int(round(hop_seconds * sample_rate))
  if win <= 0 or hop <= 0:
    raise ValueError(
      f"window ({window_seconds}s) and hop ({hop_seconds}s) must be at least one sample"
    )
  n_fft = int(2 ** np.ceil(np.log2(win))) if n_fft is None else n_fft
  if n_fft < win:
    raise ValueError(f"n_fft={n_fft} is shorter than the window ({win} samples)")
  return win, hop, n_fft


def num_frames(
  num_samples,
  sample_rate: int = TARGET_SAMPLE_RATE,
  window_seconds: float = 0.025,
  hop_seconds: float = 0.010,
  n_fft: int | None = None,
  center: bool = True,
):
  """Frames ``log_mel`` yields for ``num_samples`` (int or integer array)."""
  _, hop, n_fft = frame_geometry(sample_rate, window_seconds, hop_seconds, n_fft)
  if center:
    return 1 + num_samples // hop
  return 1 + (num_samples - n_fft) // hop


def log_mel(
  waveform,
  sample_rate: int = TARGET_SAMPLE_RATE,
  *,
  window_seconds: float = 0.025,
  hop_seconds: float = 0.010,
  n_fft: int | None = None,
  n_mels: int = 80,
  f_min: float = 0.0,
  f_max: float | None = None,
  mel_scale: str = "slaney",
  norm: str | None = "slaney",
  power: float = 2.0,
  center: bool = True,
  log_floor: float = 1e-6,
) -> jnp.ndarray:
  """Log-mel filterbank features, computed in JAX.

  A periodic Hann window of ``window_seconds`` (zero-padded to ``n_fft``,
  centred, as librosa/torch do) every ``hop_seconds``; with ``center`` the
  signal is reflect-padded by ``n_fft // 2`` on both sides so frame ``t`` is
  centred at sample ``t * hop``. Then ``|rfft|**power``, the mel filterbank
  (:func:`mel_filterbank`), and ``log(max(mel, log_floor))``.

  Args:
    waveform: ``[..., T]`` float samples.
    n_fft: FFT size; default the next power of two >= the window.
  Returns:
    ``[..., frames, n_mels]`` float32, ``frames = num_frames(T, ...)``.
  """
  win, hop, n_fft = frame_geometry(sample_rate, window_seconds, hop_seconds, n_fft)
  x = jnp.asarray(waveform, jnp.float32)
  if center:
    pad = n_fft // 2
    if x.shape[-1] <= pad:
      raise ValueError(
        f"waveform of {x.shape[-1]} samples is too short for reflect padding of {pad}"
      )
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
  if x.shape[-1] < n_fft:
    raise ValueError(f"waveform of {x.shape[-1]} samples is shorter than n_fft={n_fft}")
  frames = 1 + (x.shape[-1] - n_fft) // hop
  idx = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
  segments = x[..., idx]  # [..., frames, n_fft]
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic
  left = (n_fft - win) // 2
  window = np.zeros(n_fft, np.float32)
  window[left : left + win] = hann
  spec = jnp.abs(jnp.fft.rfft(segments * window, axis=-1)) ** power
  fbank = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale, norm)
  mel = jnp.einsum("...f,fm->...m", spec, fbank, precision="highest")
  return jnp.log(jnp.maximum(mel, log_floor))
