"""bmqa_jax.audio: reading/resampling audio and JAX log-mel features."""

import os

import numpy as np
import pytest
import soundfile

from bmqa_jax import audio
from bmqa_jax.speech import features

SPEECH_DIR = "/work/shared/data/speech"


def _tone(freq, rate, seconds, amp=0.5):
  t = np.arange(int(rate * seconds)) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x, rate):
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spec) * rate / len(x)


@pytest.mark.parametrize("fmt,rate", [("WAV", 16000), ("FLAC", 44100), ("WAV", 8000)])
def test_read_audio_resamples_stereo_to_16k_mono(tmp_path, fmt, rate):
  left, right = _tone(440, rate, 1.0, 0.6), _tone(440, rate, 1.0, 0.2)
  path = tmp_path / f"a.{fmt.lower()}"
  soundfile.write(str(path), np.stack([left, right], 1), rate, format=fmt, subtype="PCM_16")
  x, sr = audio.read_audio(str(path))
  assert sr == 16000 and x.dtype == np.float32 and x.ndim == 1
  assert abs(len(x) - 16000) <= 1
  assert abs(_peak_hz(x, 16000) - 440) < 2
  # Mono is the channel mean: amplitude (0.6 + 0.2) / 2 in the steady part.
  np.testing.assert_allclose(np.abs(x[2000:-2000]).max(), 0.4, atol=0.01)


def test_resample_removes_content_above_new_nyquist():
  x = _tone(440, 48000, 1.0) + _tone(12000, 48000, 1.0)  # 12 kHz > 8 kHz
  y = audio.resample(x, 48000, 16000)
  spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
  freqs = np.fft.rfftfreq(len(y), 1 / 16000)
  alias = spec[np.abs(freqs - 4000) < 20].max()  # 12 kHz would fold to 4 kHz
  assert alias < 1e-3 * spec.max()


def test_read_audio_errors_name_the_file(tmp_path):
  missing = tmp_path / "missing.wav"
  with pytest.raises(audio.AudioReadError, match="missing.wav"):
    audio.read_audio(str(missing))
  garbage = tmp_path / "garbage.wav"
  garbage.write_bytes(b"this is not audio at all" * 10)
  with pytest.raises(audio.AudioReadError, match="garbage.wav"):
    audio.read_audio(str(garbage))
  empty = tmp_path / "empty.wav"
  soundfile.write(str(empty), np.zeros((0,), np.float32), 16000)
  with pytest.raises(audio.AudioReadError, match="empty.wav"):
    audio.read_audio(str(empty))
  assert issubclass(audio.AudioReadError, ValueError)


def test_log_mel_shapes_and_frames():
  x = np.random.default_rng(0).standard_normal((2, 16000)).astype(np.float32)
  m = audio.log_mel(x)
  assert m.shape == (2, audio.num_frames(16000), 80) == (2, 101, 80)
  m2 = audio.log_mel(x[0], center=False, n_mels=40, window_seconds=0.032)
  assert m2.shape == (audio.num_frames(16000, window_seconds=0.032, center=False), 40)
  np.testing.assert_allclose(np.asarray(m[0]), np.asarray(audio.log_mel(x[0])), atol=1e-5)
  with pytest.raises(ValueError, match="n_fft"):
    audio.log_mel(x[0], n_fft=256)  # 25 ms = 400 samples > 256


def test_log_mel_matches_librosa():
  librosa = pytest.importorskip("librosa")
  rng = np.random.default_rng(1)
  x = (_tone(300, 16000, 0.7) + 0.05 * rng.standard_normal(11200)).astype(np.float32)
  ours = np.asarray(audio.log_mel(x))
  ref = librosa.feature.melspectrogram(
    y=x.astype(np.float64),
    sr=16000,
    n_fft=512,
    win_length=400,
    hop_length=160,
    n_mels=80,
    center=True,
    pad_mode="reflect",
    power=2.0,
  ).T
  np.testing.assert_allclose(ours, np.log(np.maximum(ref, 1e-6)), atol=2e-4)
  for htk, norm, fmin, fmax in ((False, "slaney", 0.0, None), (True, None, 20.0, 7600.0)):
    fb = librosa.filters.mel(
      sr=16000, n_fft=512, n_mels=40, htk=htk, norm=norm, fmin=fmin, fmax=fmax
    )
    ours_fb = audio.mel_filterbank(16000, 512, 40, fmin, fmax, "htk" if htk else "slaney", norm)
    np.testing.assert_allclose(ours_fb, fb.T, rtol=1e-4, atol=1e-7)


def test_featurize_equals_unbucketed_log_mel():
  x = np.random.default_rng(2).standard_normal(12345).astype(np.float32)
  f = features.featurize(x, normalize=False, bucket_samples=16000)
  np.testing.assert_allclose(f, np.asarray(audio.log_mel(x)), atol=1e-4)
  g = features.featurize(x)
  np.testing.assert_allclose(g.mean(0), 0, atol=1e-4)
  np.testing.assert_allclose(g.std(0), 1, atol=1e-2)


@pytest.mark.skipif(not os.path.isdir(SPEECH_DIR), reason="real recordings absent")
def test_real_recordings():
  names = sorted(n for n in os.listdir(SPEECH_DIR) if n.endswith(".wav"))
  assert len(names) >= 5
  crop = 16000  # features of the first second of each: one compiled shape
  for n in names:
    x, sr = audio.read_audio(os.path.join(SPEECH_DIR, n))
    assert sr == 16000 and len(x) > crop and 0.05 < np.abs(x).max() <= 1.0
    m = np.asarray(audio.log_mel(x[:crop]))
    assert m.shape == (audio.num_frames(crop), 80) and np.all(np.isfinite(m))
    # Speech: loud frames well above the quietest ones (> 5 nats of energy).
    energy = m.mean(1)
    assert energy.max() - energy.min() > 5, n


def test_cached_features_are_written_once_and_read_back(tmp_path, monkeypatch):
  """The recogniser's feature cache goes through `workdir.atomic_write`: the
  second call reads the file (featurising again would fail) and no temporary
  file is left in the cache folder."""
  paths = []
  for i, freq in enumerate((300, 900)):
    paths.append(str(tmp_path / f"{i}.wav"))
    soundfile.write(paths[-1], _tone(freq, 16000, 0.5 + 0.25 * i), 16000)
  cache_dir = tmp_path / "cache"
  first = features.cached_features(paths, str(cache_dir), {})
  monkeypatch.setattr(features, "featurize", None)
  again = features.cached_features(paths, str(cache_dir), {})
  np.testing.assert_array_equal(again.features, first.features)
  np.testing.assert_array_equal(again.offsets, first.offsets)
  assert [f.endswith(".npz") and not f.startswith(".") for f in os.listdir(cache_dir)] == [True]
