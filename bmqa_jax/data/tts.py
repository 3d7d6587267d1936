"""Offline text-to-speech for the built-in dataset's spoken descriptions.

The paper's quality semantic descriptions (QSDs) are spoken sentences that a
speech recogniser turns into words (Eq. 2). The built-in dataset has no human
recordings, so it synthesises them with eSpeak NG, varying voice, rate and pitch
so that the "speakers" differ.

Two back ends, tried in this order:

1. the PyPI wheel ``espeakng-loader`` (bundles ``libespeak-ng`` and its data, so
   it works on a fresh machine with only ``pip``), driven through ``ctypes``;
2. the ``espeak-ng`` command-line program, when it is on ``PATH``.

:func:`available` is False when neither exists; callers then keep text only.

Determinism. eSpeak NG keeps state between utterances (its pitch "flutter"
phase runs on across calls, and breath noise is seeded from the clock), so
in-process calls would depend on what was said before. The library back end
therefore runs in a small helper process that initialises eSpeak once and
forks a child per utterance: every utterance starts from the same state and is
seeded from its arguments, so the same arguments always give the same samples,
in any order and in any process. A fork costs ~1 ms; an utterance ~15 ms.
The CLI back end starts a fresh process per utterance, which is deterministic
for the voices of :func:`voices` (none uses breath noise or the Klatt
synthesiser, eSpeak's only random parts).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import wave
import zlib
from math import gcd

import numpy as np

__all__ = [
  "TTSUnavailableError",
  "available",
  "backend",
  "voices",
  "synthesize",
  "synthesize_array",
]

# English voices x variants shipped with eSpeak NG that sound clearly different
# (male/female formants, US/British). None uses breath noise or Klatt, so all
# are deterministic with either back end.
_VOICES = (
  "en-us",
  "en-us+f1",
  "en-us+m3",
  "en-us+f4",
  "en-gb-x-rp+m7",
  "en-gb-x-rp+linda",
  "en-us+m5",
  "en-us+steph",
)

# espeak_ng API constants (speak_lib.h).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_PARAM_RATE, _PARAM_PITCH = 1, 3
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# Helper-process wire format. Request: header + voice + text (UTF-8).
# Response: status, payload length, payload (int16 samples, or an error text).
_REQUEST = struct.Struct("<IiiII")  # seed, rate_wpm, pitch, len(voice), len(text)
_RESPONSE = struct.Struct("<iQ")  # status (0 ok, else error), len(payload)
_HELLO = struct.Struct("<i")  # native sample rate, sent once at start


class TTSUnavailableError(RuntimeError):
  """Raised by :func:`synthesize` when no eSpeak NG back end is installed."""


# --------------------------------------------------------------------------
# Helper process (runs as `python -I tts.py --serve LIB DATA`): stdlib only.


def _read_exact(fd: int, n: int) -> bytes:
  out = bytearray()
  while len(out) < n:
    chunk = os.read(fd, n - len(out))
    if not chunk:
      raise EOFError
    out += chunk
  return bytes(out)


def _write_all(fd: int, data: bytes) -> None:
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view) :]


def _open_espeak(lib_path: str, data_path: str):
  """Loads and initialises libespeak-ng; returns (lib, sample_rate)."""
  lib = ctypes.CDLL(lib_path)
  lib.espeak_Initialize.restype = ctypes.c_int
  lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_Synth.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_uint,
    ctypes.c_uint,
    ctypes.c_void_p,
    ctypes.c_void_p,
  ]
  # espeak_Initialize takes the folder holding espeak-ng-data and returns the
  # synthesiser's sample rate (22050 Hz).
  rate = lib.espeak_Initialize(
    _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.path.dirname(data_path).encode(), _INITIALIZE_DONT_EXIT
  )
  return lib, rate


def _speak(lib, seed: int, rate_wpm: int, pitch: int, voice: str, text: str) -> bytes:
  """Synthesises one utterance; returns int16 little-endian samples."""
  chunks: list[bytes] = []

  @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)
  def collect(wav, num_samples, events):
    del events
    if num_samples > 0 and wav:
      chunks.append(ctypes.string_at(wav, 2 * num_samples))
    return 0

  lib.espeak_SetSynthCallback(collect)
  if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
    raise ValueError(f"eSpeak NG has no voice {voice!r}")
  lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
  lib.espeak_SetParameter(_PARAM_PITCH, pitch, 0)
  lib.espeak_ng_SetRandSeed(seed)
  data = text.encode("utf-8") + b"\0"
  err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
  lib.espeak_Synchronize()
  if err != _EE_OK:
    raise RuntimeError(f"espeak_Synth failed ({err})")
  return b"".join(chunks)


def _serve(lib_path: str, data_path: str) -> None:
  """Helper main loop: one request on stdin -> one forked child -> stdout."""
  fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
  lib, rate = _open_espeak(lib_path, data_path)
  _write_all(fd_out, _HELLO.pack(rate))
  can_fork = hasattr(os, "fork")
  while True:
    try:
      seed, rate_wpm, pitch, n_voice, n_text = _REQUEST.unpack(_read_exact(fd_in, _REQUEST.size))
      voice = _read_exact(fd_in, n_voice).decode()
      text = _read_exact(fd_in, n_text).decode()
    except EOFError:
      return
    args = (lib, seed, rate_wpm, pitch, voice, text)
    if not can_fork:  # no fork (Windows): same results within one call order
      try:
        status, payload = 0, _speak(*args)
      except (ValueError, RuntimeError) as e:
        status, payload = 1, str(e).encode()
      _write_all(fd_out, _RESPONSE.pack(status, len(payload)) + payload)
      continue
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: synthesise from the pristine state, then exit
      os.close(r)
      try:
        status, payload = 0, _speak(*args)
      except Exception as e:  # pylint: disable=broad-except
        status, payload = 1, str(e).encode()
      _write_all(w, _RESPONSE.pack(status, len(payload)) + payload)
      os._exit(0)  # pylint: disable=protected-access
    os.close(w)
    reply = bytearray()
    while chunk := os.read(r, 1 << 16):
      reply += chunk
    os.close(r)
    _, code = os.waitpid(pid, 0)
    if len(reply) < _RESPONSE.size:
      msg = f"eSpeak NG child died (wait status {code})".encode()
      reply = bytearray(_RESPONSE.pack(1, len(msg)) + msg)
    _write_all(fd_out, bytes(reply))


# --------------------------------------------------------------------------
# Caller side.


class _Helper:
  """Client of the helper process (one per calling process)."""

  def __init__(self, lib_path: str, data_path: str):
    self._proc = subprocess.Popen(
      [sys.executable, "-I", os.path.abspath(__file__), "--serve", lib_path, data_path],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      bufsize=0,
    )
    self._lock = threading.Lock()
    self.pid = os.getpid()
    try:
      (self.sample_rate,) = _HELLO.unpack(_read_exact(self._proc.stdout.fileno(), _HELLO.size))
    except EOFError:
      self._proc.wait()
      raise TTSUnavailableError(
        f"eSpeak NG helper failed to start (exit {self._proc.returncode})"
      ) from None
    if self.sample_rate <= 0:
      self.close()
      raise TTSUnavailableError(
        f"espeak_Initialize failed ({self.sample_rate}) with data at {data_path}"
      )
    atexit.register(self.close)

  def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
    seed = zlib.crc32(f"{voice}|{rate_wpm}|{pitch}|{text}".encode())
    v, t = voice.encode(), text.encode("utf-8")
    with self._lock:
      if self._proc.poll() is not None:
        raise RuntimeError(f"eSpeak NG helper exited ({self._proc.returncode})")
      _write_all(
        self._proc.stdin.fileno(), _REQUEST.pack(seed, rate_wpm, pitch, len(v), len(t)) + v + t
      )
      fd = self._proc.stdout.fileno()
      status, n = _RESPONSE.unpack(_read_exact(fd, _RESPONSE.size))
      payload = _read_exact(fd, n)
    if status != 0:
      raise ValueError(
        f"eSpeak NG failed for voice {voice!r}, text {text!r}: {payload.decode(errors='replace')}"
      )
    return np.frombuffer(payload, "<i2").astype(np.int16)

  def close(self) -> None:
    if self._proc.poll() is None:
      self._proc.stdin.close()
      try:
        self._proc.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._proc.kill()


_helper_lock = threading.Lock()
_helper_instance: _Helper | None = None


@functools.cache
def _library_paths() -> tuple[str, str] | None:
  try:
    import espeakng_loader  # pylint: disable=import-outside-toplevel

    lib, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
  except (ImportError, RuntimeError, AttributeError):
    return None
  return (lib, data) if os.path.exists(lib) else None


def _helper() -> _Helper:
  global _helper_instance
  with _helper_lock:
    # A forked caller (e.g. a data-loader worker) must not share the parent's pipes.
    if _helper_instance is None or _helper_instance.pid != os.getpid():
      _helper_instance = _Helper(*_library_paths())
    return _helper_instance


def _cli() -> str | None:
  return shutil.which("espeak-ng")


@functools.cache
def _library_works() -> bool:
  """The wheel is installed and its library initialises (helper started)."""
  if _library_paths() is None:
    return False
  try:
    _helper()
  except (TTSUnavailableError, OSError):
    return False
  return True


def backend() -> str | None:
  """Which back end :func:`synthesize` uses: ``"library"``, ``"cli"`` or None."""
  if _library_works():
    return "library"
  if _cli() is not None:
    return "cli"
  return None


def available() -> bool:
  """True when speech can be synthesised on this machine."""
  return backend() is not None


def voices() -> list[str]:
  """English eSpeak NG voices (``language+variant``) that sound distinct."""
  return list(_VOICES)


def _cli_synthesize(text: str, voice: str, rate_wpm: int, pitch: int) -> tuple[np.ndarray, int]:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "tts.wav")
    proc = subprocess.run(
      [
        _cli(),
        "-v",
        voice,
        "-s",
        str(rate_wpm),
        "-p",
        str(pitch),
        "-b",
        "1",
        "-w",
        out,
        "--",
        text,
      ],
      capture_output=True,
      check=False,
    )
    if proc.returncode != 0 or not os.path.exists(out):
      raise ValueError(
        f"espeak-ng failed ({proc.returncode}) for voice {voice!r}: "
        f"{proc.stderr.decode(errors='replace').strip()}"
      )
    with wave.open(out, "rb") as w:
      rate = w.getframerate()
      pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
  return pcm, rate


def synthesize_array(
  text: str, *, voice: str = "en-us", rate_wpm: int = 160, pitch: int = 50, sample_rate: int = 16000
) -> np.ndarray:
  """Speaks ``text`` and returns int16 mono samples at ``sample_rate``.

  Args:
    text: what to say (UTF-8).
    voice: an eSpeak NG voice, optionally with a variant (``"en-us+f4"``).
    rate_wpm: speaking rate in words per minute (eSpeak's range 80..450).
    pitch: base pitch 0..99 (eSpeak's scale; 50 is the voice's default).
    sample_rate: output rate; eSpeak's native 22050 Hz is resampled with a
      polyphase filter.
  """
  if not text.strip():
    raise ValueError("cannot synthesise empty text")
  if not 0 <= pitch <= 99:
    raise ValueError(f"pitch must be in 0..99, got {pitch}")
  if not 80 <= rate_wpm <= 450:
    raise ValueError(f"rate_wpm must be in 80..450, got {rate_wpm}")
  if backend() == "library":
    helper = _helper()
    pcm, native = helper.synthesize(text, voice, int(rate_wpm), int(pitch)), helper.sample_rate
  elif backend() == "cli":
    pcm, native = _cli_synthesize(text, voice, int(rate_wpm), int(pitch))
  else:
    raise TTSUnavailableError(
      "no eSpeak NG: pip install espeakng-loader, or install the espeak-ng program"
    )
  if native != sample_rate and pcm.size:
    from scipy import signal  # pylint: disable=import-outside-toplevel

    g = gcd(native, sample_rate)
    x = signal.resample_poly(pcm.astype(np.float64), sample_rate // g, native // g)
    pcm = np.clip(np.round(x), -32768, 32767).astype(np.int16)
  return pcm


def synthesize(
  text: str,
  path: str,
  *,
  voice: str = "en-us",
  rate_wpm: int = 160,
  pitch: int = 50,
  sample_rate: int = 16000,
) -> None:
  """Speaks ``text`` into ``path`` as a mono 16-bit PCM WAV at ``sample_rate``.

  See :func:`synthesize_array` for the arguments. Deterministic.
  """
  pcm = synthesize_array(text, voice=voice, rate_wpm=rate_wpm, pitch=pitch, sample_rate=sample_rate)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with wave.open(path, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sample_rate)
    w.writeframes(pcm.astype("<i2").tobytes())


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
  _serve(*sys.argv[2:4])
