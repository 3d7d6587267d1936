"""bmqa_jax.data.tts: offline eSpeak NG synthesis for the built-in dataset."""

import hashlib
import subprocess
import sys
import wave

import numpy as np
import pytest

from bmqa_jax.data import tts

needs_tts = pytest.mark.skipif(not tts.available(), reason="no eSpeak NG back end")
SENTENCE = "a dim street with a blue car, noisy and slightly blurred"


def test_voices_listed():
  v = tts.voices()
  assert len(v) >= 4 and len(set(v)) == len(v)
  assert all(name.startswith("en") for name in v)


@needs_tts
def test_writes_16k_mono_16bit_wav(tmp_path):
  path = tmp_path / "sub" / "a.wav"
  tts.synthesize(SENTENCE, str(path), voice=tts.voices()[1], rate_wpm=170, pitch=40)
  with wave.open(str(path), "rb") as w:
    assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
    pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
  seconds = len(pcm) / 16000
  # 10 words at 170 wpm: ~3.5 s of speech; not silent, not clipped flat.
  assert 1.5 < seconds < 8.0, seconds
  assert np.abs(pcm).max() > 3000 and pcm.astype(float).std() > 300


@needs_tts
def test_deterministic_in_any_order_and_process():
  kw = dict(voice="en-us+f4", rate_wpm=150, pitch=60)
  a = tts.synthesize_array(SENTENCE, **kw)
  tts.synthesize_array("something else entirely", voice="en-us+m3")
  b = tts.synthesize_array(SENTENCE, **kw)
  np.testing.assert_array_equal(a, b)
  if tts.backend() != "library":
    return
  # A fresh interpreter (fresh eSpeak state) gives the same native samples
  # (compared before resampling, so the child need not import scipy).
  native = tts._helper().synthesize(SENTENCE, "en-us+f4", 150, 60)  # pylint: disable=protected-access
  code = (
    "import sys, hashlib; from bmqa_jax.data import tts; "
    f"x = tts._helper().synthesize({SENTENCE!r}, 'en-us+f4', 150, 60); "
    "sys.stdout.write(hashlib.sha256(x.tobytes()).hexdigest())"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  ).stdout
  assert out == hashlib.sha256(native.tobytes()).hexdigest()


@needs_tts
def test_voices_rates_and_pitches_differ():
  base = tts.synthesize_array(SENTENCE, voice="en-us")
  slow = tts.synthesize_array(SENTENCE, voice="en-us", rate_wpm=110)
  assert len(slow) > 1.25 * len(base)
  for kw in (dict(voice=tts.voices()[2]), dict(voice="en-us", pitch=80)):
    other = tts.synthesize_array(SENTENCE, **kw)
    assert len(other) != len(base) or not np.array_equal(other, base)
  # All listed voices exist.
  for v in tts.voices():
    assert tts.synthesize_array("dark", voice=v).size > 1000


@needs_tts
def test_bad_arguments():
  with pytest.raises(ValueError, match="empty"):
    tts.synthesize_array("  ")
  with pytest.raises(ValueError, match="pitch"):
    tts.synthesize_array("hi", pitch=120)
  with pytest.raises(ValueError, match="rate_wpm"):
    tts.synthesize_array("hi", rate_wpm=10)
  with pytest.raises(ValueError, match="qq-missing"):
    tts.synthesize_array("hi", voice="qq-missing")


@pytest.mark.skipif(tts._cli() is None, reason="no espeak-ng program")  # pylint: disable=protected-access
def test_cli_backend(monkeypatch):
  monkeypatch.setattr(tts, "_library_works", lambda: False)
  assert tts.backend() == "cli"
  a = tts.synthesize_array("a bright room", voice="en-us+f4", rate_wpm=150)
  b = tts.synthesize_array("a bright room", voice="en-us+f4", rate_wpm=150)
  np.testing.assert_array_equal(a, b)
  assert 0.5 * 16000 < len(a) < 3 * 16000 and np.abs(a).max() > 3000
  with pytest.raises(ValueError, match="qq-missing"):
    tts.synthesize_array("hi", voice="qq-missing")
