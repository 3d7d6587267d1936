"""Trust: no data command silently overwrites or mixes results (issue items 7, 10, 11).

Built-in dataset folders are built aside and renamed into place, reused only
when their recorded build equals the requested one; the built-in cache key, the
tokenizer and prepared TFDS data are keyed by what they were made from; scenes
may not leak across splits or from pretraining into held-out splits; a
truncated WAV and a decompression-bomb PNG are refused with the file named.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image, ImageFile

from bmqa_jax import audio
from bmqa_jax.data import builtin
from bmqa_jax.data import image_io
from bmqa_jax.data import manifest
from bmqa_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
A = builtin.BuildArgs(num_scenes=6, image_size=32, seed=3, audio=False, workers=1)
B = builtin.BuildArgs(num_scenes=6, image_size=32, seed=4, audio=False, workers=1)


def _snapshot(folder):
  """{relative path: bytes} of every file in `folder`."""
  out = {}
  for d, _, files in os.walk(folder):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, folder)] = fh.read()
  return out


def _run(*args, timeout=300):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)  # this tree's package
  return subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
  )


# --- A: built-in dataset folders -------------------------------------------------


def test_interrupted_rebuild_with_other_args_never_mixes_into_the_folder(tmp_path, monkeypatch):
  """The report: a rebuild with another seed killed mid-way left 14 of 60 images
  of that seed under the first seed's manifest, and the folder was reused."""
  out = str(tmp_path / "data")
  builtin.build(out, A)
  before = _snapshot(out)
  real, calls = builtin._build_scene, []

  def crash_after_two(*a, **k):
    calls.append(1)
    if len(calls) > 2:
      raise KeyboardInterrupt("killed")
    return real(*a, **k)

  monkeypatch.setattr(builtin, "_build_scene", crash_after_two)
  for kwargs in ({}, {"overwrite": True}):
    calls.clear()
    try:
      builtin.build(out, B, **kwargs)
    except (KeyboardInterrupt, ValueError):
      pass
    assert _snapshot(out) == before  # untouched: no image of seed 4 in it
  monkeypatch.setattr(builtin, "_build_scene", real)
  builtin.build(out, A)  # reused, and equal to a fresh build
  fresh = str(tmp_path / "fresh")
  builtin.build(fresh, A)
  assert _snapshot(out) == _snapshot(fresh) == before
  assert sorted(os.listdir(tmp_path)) == ["data", "fresh"]  # no temporary folder left


def test_other_args_are_refused_with_the_differences_then_replaced_on_request(tmp_path):
  out = str(tmp_path / "data")
  builtin.build(out, A)
  with pytest.raises(builtin.DatasetMismatchError) as e:
    builtin.build(out, B)
  assert out in str(e.value) and "seed=3 there, 4 requested" in str(e.value)
  assert "overwrite" in str(e.value)
  builtin.build(out, builtin.BuildArgs(**{**A.__dict__, "workers": 2}))  # speed only
  logs = []
  builtin.build(out, B, overwrite=True, log=logs.append)
  assert "replacing" in logs[0]
  with open(os.path.join(out, "dataset_info.json")) as f:
    assert json.load(f)["args"]["seed"] == 4
  assert sorted(os.listdir(tmp_path)) == ["data"]


def test_killed_build_leaves_no_folder_and_its_leftovers_are_cleaned(tmp_path):
  out = tmp_path / "data"
  args = builtin.BuildArgs(num_scenes=60, image_size=64, seed=1, audio=False, workers=1)
  code = (
    f"from bmqa_jax.data import builtin; "
    f"builtin.build({str(out)!r}, builtin.BuildArgs(**{args.__dict__!r}))"
  )
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if sum(f.endswith(".jpg") for _, _, fs in os.walk(tmp_path) for f in fs) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the build ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not out.exists() or not os.listdir(out)  # the half build is not in --out
  leftovers = [n for n in os.listdir(tmp_path) if n.startswith("data.tmp-")]
  assert leftovers  # the killed build's own folder
  small = builtin.BuildArgs(**{**args.__dict__, "num_scenes": 3})
  builtin.build(str(out), small)
  assert sorted(os.listdir(tmp_path)) == ["data"]  # the dead build's folder is gone
  assert (out / "dataset_info.json").exists()


def test_two_processes_building_one_folder_at_once(tmp_path):
  out = str(tmp_path / "cache" / "builtin-x")
  code = (
    "from bmqa_jax.data import builtin; "
    f"builtin.build({out!r}, builtin.BuildArgs(**{A.__dict__!r}))"
  )
  for _ in range(2):
    procs = [
      subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
      for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
  fresh = str(tmp_path / "fresh")
  builtin.build(fresh, A)
  assert _snapshot(out) == _snapshot(fresh)
  assert os.listdir(tmp_path / "cache") == ["builtin-x"]


def test_two_processes_building_other_args_into_one_folder_do_not_mix(tmp_path):
  """E.g. two configs with one `builtin_dir`: one build wins whole, the other
  fails with the folder named; the images are never of both seeds."""
  out = str(tmp_path / "data")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        "-c",
        "from bmqa_jax.data import builtin; builtin.build("
        f"{out!r}, builtin.BuildArgs(**{args.__dict__!r}))",
      ],
      cwd=ROOT,
      stderr=subprocess.PIPE,
      text=True,
    )
    for args in (A, B)
  ]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  codes = [p.returncode for p in procs]
  assert sorted(codes) == [0, 1], errs
  assert out in errs[codes.index(1)] and "DatasetMismatchError" in errs[codes.index(1)]
  with open(os.path.join(out, "dataset_info.json")) as f:
    won = A if json.load(f)["args"]["seed"] == A.seed else B
  builtin.build(str(tmp_path / "fresh"), won)
  assert _snapshot(out) == _snapshot(str(tmp_path / "fresh"))


def test_build_dataset_cli_refuses_foreign_or_different_folders(tmp_path):
  cli = ["launch/build_dataset.py", "--num_scenes=2", "--image_size=32", "--noaudio"]
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  for extra in ([], ["--overwrite"]):
    proc = _run(*cli, f"--out={mine}", *extra)
    assert proc.returncode != 0 and str(mine) in proc.stderr and "notes.txt" in proc.stderr
    assert sorted(os.listdir(mine)) == ["notes.txt"]
  out = tmp_path / "data"
  assert _run(*cli, f"--out={out}", "--seed=1").returncode == 0
  before = _snapshot(out)
  proc = _run(*cli, f"--out={out}", "--seed=2")
  assert proc.returncode != 0 and str(out) in proc.stderr and "seed=1 there" in proc.stderr
  assert _snapshot(out) == before  # the manifest was not replaced
  assert _run(*cli, f"--out={out}", "--seed=1").returncode == 0  # same build: reused
  assert _run(*cli, f"--out={out}", "--seed=2", "--overwrite").returncode == 0
  with open(out / "dataset_info.json") as f:
    assert json.load(f)["args"]["seed"] == 2


# --- B: caches keyed by content ---------------------------------------------------


def test_builtin_cache_key_and_info_follow_the_generator_code(tmp_path, monkeypatch):
  digest = builtin.generator_digest()
  assert len(digest) == 64 and digest == builtin.generator_digest()
  key = builtin.cache_key(A.__dict__)
  assert key == builtin.cache_key(A) == builtin.cache_key({**A.__dict__, "workers": 3})
  assert key != builtin.cache_key(B.__dict__)
  assert builtin.cache_key({}) == builtin.cache_key(builtin.BuildArgs())
  out = str(tmp_path / "data")
  builtin.build(out, A)
  with open(os.path.join(out, "dataset_info.json")) as f:
    info = json.load(f)
  assert info["digest"] == digest and info["version"] == builtin.VERSION
  monkeypatch.setattr(builtin, "generator_digest", lambda: "f" * 64)  # code changed
  assert builtin.cache_key(A.__dict__) != key
  with pytest.raises(builtin.DatasetMismatchError, match="generator code"):
    builtin.build(out, A)


TEXTS = ["a dark kitchen with a table", "a bright street at night", "a dim room"] * 5


def test_tokenizer_is_reused_only_for_its_training_texts(tmp_path):
  path = str(tmp_path / "w" / "tokenizer.model")
  tokenizer_lib.load_or_train(path, TEXTS, 40)
  assert sorted(os.listdir(tmp_path / "w")) == ["tokenizer.model", "tokenizer.model.json"]
  with open(path, "rb") as f:
    model = f.read()
  tokenizer_lib.load_or_train(path, TEXTS, 40)
  tokenizer_lib.load_or_train(path, [], 40)  # evaluation: nothing to compare
  with pytest.raises(tokenizer_lib.TokenizerMismatchError) as e:
    tokenizer_lib.load_or_train(path, TEXTS[:-1] + ["other words"], 40)
  assert path in str(e.value) and "training texts differ" in str(e.value)
  with pytest.raises(tokenizer_lib.TokenizerMismatchError, match="vocab_size 40 there, 50"):
    tokenizer_lib.load_or_train(path, TEXTS, 50)
  assert issubclass(tokenizer_lib.TokenizerMismatchError, ValueError)
  with open(path, "rb") as f:
    assert f.read() == model  # never replaced
  os.remove(path + ".json")  # a workdir of an older release: accepted as it is
  assert tokenizer_lib.load_or_train(path, ["other words"] * 5, 50).path == path


def test_tfds_config_fields_are_part_of_the_prepared_identity(tmp_path):
  pytest.importorskip("tensorflow")
  import test_tfds  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top

  test_tfds._folder(str(tmp_path / "folder"), np.random.default_rng(0))
  data_dir = str(tmp_path / "prepared")
  cfg = tfds_builders.IqaConfig(**test_tfds.CUSTOM)  # MOS on 1..5
  tfds_builders.build("iqa_folder", str(tmp_path / "folder"), data_dir, cfg)
  mos = lambda: sorted(
    s.mos
    for s in manifest.load(
      tfds_builders.export_manifest("iqa_folder/mine", data_dir, log=lambda m: None),
      check_images=False,
    )
  )
  first = mos()
  changed = tfds_builders.IqaConfig(**dict(test_tfds.CUSTOM, mos_min=0.0))
  with pytest.raises(ValueError) as e:  # the old code reused the data silently
    tfds_builders.build("iqa_folder", str(tmp_path / "folder"), data_dir, changed)
  assert isinstance(e.value, tfds_builders.PreparedDataMismatchError)
  assert "mos_min=1.0 there, 0.0 now" in str(e.value)
  assert os.path.join(data_dir, "iqa_folder", "mine") in str(e.value)
  assert mos() == first
  tfds_builders.build("iqa_folder", str(tmp_path / "folder"), data_dir, changed, overwrite=True)
  second = mos()  # exported again: the prepared data changed
  np.testing.assert_allclose(np.array(second), 0.2 + 0.8 * np.array(first), atol=1e-5)
  tfds_builders.build("iqa_folder", str(tmp_path / "folder"), data_dir, changed)  # same


# --- C: scene leakage, truncated audio, pixel bomb --------------------------------


def _manifest(folder, lines, name="m.csv", header="image,mos,scene,split"):
  Image.new("RGB", (8, 8)).save(folder / "a.png")
  path = folder / name
  path.write_text(header + "\n" + "\n".join(lines) + "\n")
  return str(path)


def test_scene_in_two_splits_is_refused_whatever_its_spelling(tmp_path):
  path = _manifest(
    tmp_path,
    [
      "a.png,0.5,kitchen,train",
      "a.png,0.5,street,train",
      "a.png,0.5,Kitchen ,test",
      "a.png,0.5,park,val",
      "a.png,0.5,STREET,val",
      "a.png,0.5,kitchen,train",
    ],
  )
  for kwargs in ({"splits": ["train"]}, {"splits": ["test"]}, {"skip_bad": True}):
    with pytest.raises(manifest.ManifestError) as e:
      manifest.load(path, **kwargs)
    msg = str(e.value)
    assert "row 4: scene 'Kitchen ' (the same scene as 'kitchen'" in msg
    assert "in split 'test' here but in 'train' at row 2" in msg
    assert "2 scene(s)" in msg and "'kitchen': train (rows 2, 7), test (rows 4)" in msg
    assert "'street': train (rows 3), val (rows 6)" in msg


def test_pretraining_scenes_must_not_be_held_out_scenes(tmp_path):
  main = _manifest(tmp_path, ["a.png,0.5,s1,train", "a.png,0.5,s2,test", "a.png,0.5,s3,val"])
  ok = _manifest(tmp_path, ["a.png,,s1,train", "a.png,,s2,test"], name="pre.csv")
  manifest.check_disjoint_scenes(main, ok)  # the test scene's row is not read
  bad = _manifest(
    tmp_path, ["a.png,,s1,train", "a.png,,S2,train", "a.png,,s3,train"], name="pre.csv"
  )
  with pytest.raises(manifest.ManifestError) as e:
    manifest.check_disjoint_scenes(main, bad)
  msg = str(e.value)
  assert bad in msg and "2 scene(s)" in msg
  assert f"'s2' (test at {main}, row 3; pretraining rows 3)" in msg and "'s3' (val" in msg
  manifest.check_disjoint_scenes(main, bad, held_out_splits=("test",), pretrain_splits=("none",))
  no_split = _manifest(tmp_path, ["a.png,,s2"], name="pre2.csv", header="image,mos,scene")
  with pytest.raises(manifest.ManifestError, match="'s2'"):
    manifest.check_disjoint_scenes(main, no_split)
  out = builtin.build(str(tmp_path / "builtin"), A)  # its pretraining rows: train scenes
  manifest.check_disjoint_scenes(out, os.path.join(os.path.dirname(out), "pretrain.csv"))


def _wav(path, seconds=1.0, rate=16000):
  x = (0.3 * np.sin(np.arange(int(rate * seconds)) / 5)).astype(np.float32)
  soundfile.write(str(path), x, rate, subtype="PCM_16")
  return path.read_bytes()


def test_truncated_or_inconsistent_wav_is_refused_with_the_file_named(tmp_path):
  data = _wav(tmp_path / "full.wav")
  assert len(audio.read_audio(str(tmp_path / "full.wav"))[0]) == 16000
  cut = tmp_path / "cut.wav"
  cut.write_bytes(data[: 44 + 2 * 478])  # the report: read as 478 samples, no word
  with pytest.raises(audio.AudioReadError) as e:
    audio.read_audio(str(cut))
  assert str(cut) in str(e.value) and "declares 32000 bytes" in str(e.value)
  assert "478 frames" in str(e.value) and issubclass(audio.AudioFileError, ValueError)
  assert isinstance(e.value, audio.AudioFileError)
  odd = tmp_path / "odd.wav"  # half a sample at the end
  odd.write_bytes(
    data[:4]
    + struct.pack("<I", len(data) - 9)
    + data[8:40]
    + struct.pack("<I", 31999)
    + data[44:-1]
  )
  no_fmt = tmp_path / "nofmt.wav"
  no_fmt.write_bytes(data[:12] + data[36:])
  bad_align = tmp_path / "align.wav"
  bad_align.write_bytes(data[:32] + struct.pack("<H", 3) + data[34:])
  for path, why in (
    (odd, "whole number"),
    (no_fmt, "before any `fmt `"),
    (bad_align, "block align 3"),
  ):
    with pytest.raises(audio.AudioReadError, match=why):
      audio.read_audio(str(path))
  stream = tmp_path / "stream.wav"  # a writer that could not seek: size unknown
  stream.write_bytes(data[:4] + b"\xff" * 4 + data[8:40] + b"\xff" * 4 + data[44:])
  assert len(audio.read_audio(str(stream))[0]) == 16000
  path = _manifest(tmp_path, ["a.png,0.5,s1,train,cut.wav"], header="image,mos,scene,split,audio")
  with pytest.raises(manifest.ManifestError, match="row 2: .*cut.wav.*truncated"):
    manifest.load(path, check_audio=True)


def _bomb_png(path, side=12000):
  """A valid grey PNG of side x side pixels, all black: ~140 KB on disk."""
  chunk = lambda kind, body: (
    struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
  )
  z = zlib.compressobj(9)
  row = b"\0" * (side + 1)
  idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
  path.write_bytes(
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    + chunk(b"IDAT", idat)
    + chunk(b"IEND", b"")
  )
  return str(path)


def test_decoded_pixels_are_bounded_before_decoding(tmp_path, monkeypatch):
  bomb = _bomb_png(tmp_path / "bomb.png")
  assert os.path.getsize(bomb) < 400_000

  def no_decoding(self):
    raise AssertionError("the pixels were decoded")

  monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
  for read in (image_io.read_image, image_io.read_image_uint8):
    with pytest.raises(image_io.ImageReadError) as e:
      read(bomb)
    msg = str(e.value)
    assert bomb in msg and "12000x12000" in msg and "144.0 megapixels" in msg
    assert "max_pixels" in msg and "MAX_PIXELS" in msg
  monkeypatch.undo()
  small = tmp_path / "small.png"
  Image.new("RGB", (40, 30)).save(small)
  with pytest.raises(image_io.ImageReadError, match="40x30"):
    image_io.read_image_uint8(small, max_pixels=1000)
  assert image_io.read_image(small, max_pixels=1200).shape == (30, 40, 3)
  assert image_io.read_image(small, max_pixels=0).shape == (30, 40, 3)  # no bound
  monkeypatch.setattr(image_io, "MAX_PIXELS", 100)
  with pytest.raises(image_io.ImageReadError, match="40x30"):
    image_io.read_image(small)
  path = _manifest(tmp_path, ["small.png,0.5,s1,train"])
  with pytest.raises(manifest.ManifestError, match="row 2: .*small.png.*40x30"):
    manifest.load(path)
  assert len(manifest.load(path, max_pixels=5000)) == 1
  with pytest.raises(ValueError, match="max_pixels"):
    image_io.read_image(small, max_pixels=-1)
