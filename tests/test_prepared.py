"""The prepared store (bmqa_jax/data/prepared.py): images decoded once into an
ArrayRecord file give the JPEG path's batches, are reused while nothing changes
and rebuilt when something does (issue 13, item 1)."""

import dataclasses
import os

from absl import flags
import jax
import numpy as np
import pytest
from PIL import Image

from bmqa_jax import config_bases
from bmqa_jax.data import image_io
from bmqa_jax.data import manifest
from bmqa_jax.data import pipeline
from bmqa_jax.data import prepared

CFG = pipeline.from_config(
  config_bases.complete({"input": dict(image_size=24, resize_size=28, store="prepared")})
)


def _photos(folder, n=8):
  rng = np.random.default_rng(0)
  for i in range(n):
    img = rng.integers(0, 255, (30 + 3 * i, 40, 3), dtype=np.uint8)
    Image.fromarray(img).save(folder / f"{i}.jpg", quality=90)
  (folder / "m.csv").write_text(
    "image,mos,scene\n" + "".join(f"{i}.jpg,{i / n},s{i}\n" for i in range(n))
  )
  return pipeline.to_records(manifest.load(str(folder / "m.csv")), None, 12)


@pytest.fixture
def records(tmp_path):
  (tmp_path / "imgs").mkdir()
  return _photos(tmp_path / "imgs")


def _logs():
  lines = []
  return lines, lines.append


def _stores(workdir):
  return sorted(os.listdir(os.path.join(workdir, "prepared")))


def _same(a: dict, b: dict):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_store_batches_are_the_jpeg_paths(records, tmp_path, monkeypatch):
  store = prepared.attach(records, CFG, str(tmp_path))
  assert store[3]["path"] == records[3]["path"] and int(store[3]["image_row"]) == 3
  jpeg_train = iter(pipeline.train_loader(records, CFG, 4, seed=5, start_step=1))
  want_train = [next(jpeg_train) for _ in range(3)]
  want_eval = list(pipeline.eval_batches(records, CFG, 3))
  monkeypatch.setattr(image_io, "read_image_uint8", None)  # no file is decoded now
  it = iter(pipeline.train_loader(store, CFG, 4, seed=5, start_step=1))
  for want in want_train:
    _same(next(it), want)
  got_eval = list(pipeline.eval_batches(store, CFG, 3))
  assert len(got_eval) == len(want_eval)
  for got, want in zip(got_eval, want_eval):
    _same(got, want)


def test_an_unchanged_store_is_reused(records, tmp_path, monkeypatch):
  lines, log = _logs()
  prepared.attach(records, CFG, str(tmp_path), log)
  [name] = _stores(tmp_path)
  path = os.path.join(tmp_path, "prepared", name)
  mtime = os.stat(path).st_mtime_ns
  monkeypatch.setattr(prepared, "build", None)  # a rebuild would fail
  again = prepared.attach(records, CFG, str(tmp_path), log)
  assert again[0]["image_store"].path == path and os.stat(path).st_mtime_ns == mtime
  assert len(lines) == 1 and lines[0].startswith("prepared 8 images")  # built once


def test_a_changed_image_or_setting_builds_a_new_store(records, tmp_path):
  first = prepared.attach(records, CFG, str(tmp_path))[0]["image_store"].path
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(records[0]["path"])
  st = os.stat(records[0]["path"])
  os.utime(records[0]["path"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  changed = prepared.attach(records, CFG, str(tmp_path))
  assert changed[0]["image_store"].path != first
  np.testing.assert_array_equal(changed[0]["image_store"].image(0), 0)
  small = dataclasses.replace(CFG, prepare_short_side=20)
  resized = prepared.attach(records, small, str(tmp_path))[0]["image_store"].path
  assert len({first, changed[0]["image_store"].path, resized}) == 3
  assert len(_stores(tmp_path)) == 3


def test_a_corrupt_image_names_the_file_and_leaves_no_store(records, tmp_path):
  bad = records[5]["path"]
  with open(bad, "r+b") as f:
    f.truncate(200)
  with pytest.raises(image_io.ImageReadError, match="5.jpg"):
    prepared.attach(records, CFG, str(tmp_path))
  assert _stores(tmp_path) == []  # neither a store nor its temporary file


def test_short_side_shrinks_and_is_refused_in_native_mode(records, tmp_path):
  small = dataclasses.replace(CFG, prepare_short_side=16)
  recs = prepared.attach(records, small, str(tmp_path))
  for r in recs:
    h, w = 30 + 3 * int(r["index"]), 40
    s = 16 / min(h, w)
    assert r["image_store"].image(int(r["image_row"])).shape == (round(h * s), round(w * s), 3)
  big = prepared.attach(records, dataclasses.replace(CFG, prepare_short_side=500), str(tmp_path))
  assert big[7]["image_store"].image(7).shape == (51, 40, 3)  # never upscaled
  b = next(iter(pipeline.train_loader(recs, small, 4, seed=0)))
  assert b["image"].shape == (4, 24, 24, 3)
  native = dataclasses.replace(small, mode="native", native_crop=16)
  for store in ("prepared", "jpeg"):
    with pytest.raises(ValueError, match="mode='native'"):
      prepared.attach(records, dataclasses.replace(native, store=store), str(tmp_path))


@pytest.fixture
def absl_flags():
  """Grain's worker processes read absl flags (launch scripts parse them)."""
  parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  yield
  if not parsed:
    flags.FLAGS.unparse_flags()


@pytest.mark.usefixtures("absl_flags")
def test_a_grain_worker_process_reads_the_store(records, tmp_path):
  store = prepared.attach(records, CFG, str(tmp_path))
  one = dataclasses.replace(CFG, workers=1)
  got = iter(pipeline.train_loader(store, one, 4, seed=2))
  want = iter(pipeline.train_loader(records, CFG, 4, seed=2))
  for _ in range(2):
    _same(next(got), next(want))


def test_auto_keeps_the_jpeg_path_over_the_size_bound(records, tmp_path):
  lines, log = _logs()
  auto = dataclasses.replace(CFG, store="auto", prepared_max_gb=20_000 / 1e9)
  for _ in range(2):
    assert prepared.attach(records, auto, str(tmp_path), log) is records
  assert len(lines) == 1 and "over config.input.prepared_max_gb" in lines[0]
  assert not os.path.exists(tmp_path / "prepared")
  size = prepared.decoded_bytes([r["path"] for r in records])
  assert size == sum(3 * 40 * (30 + 3 * i) for i in range(8))
  fits = dataclasses.replace(auto, prepared_max_gb=1.0)
  assert "image_store" in prepared.attach(records, fits, str(tmp_path), log)[0]


def test_a_killed_build_is_not_read(records, tmp_path):
  path = prepared.store_path([r["path"] for r in records], CFG, str(tmp_path))
  os.makedirs(os.path.dirname(path))
  with open(path + ".killed.tmp", "wb") as f:  # what a killed build leaves
    f.write(b"half a store")
  recs = prepared.attach(records, CFG, str(tmp_path))
  assert recs[0]["image_store"].path == path
  np.testing.assert_array_equal(
    recs[2]["image_store"].image(2), image_io.read_image_uint8(records[2]["path"])
  )


def test_other_processes_read_the_store_of_process_zero(records, tmp_path, monkeypatch):
  path = prepared.attach(records, CFG, str(tmp_path))[0]["image_store"].path
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  monkeypatch.setattr(prepared, "build", None)
  assert prepared.attach(records, CFG, str(tmp_path))[0]["image_store"].path == path


def test_a_one_pass_reader_uses_a_store_but_never_builds_one(records, tmp_path):
  """evaluate (build=False): JPEG path without a store, the store once training made it."""
  assert prepared.attach(records, CFG, str(tmp_path), build=False) is records
  assert not os.path.exists(tmp_path / "prepared")
  built = prepared.attach(records, CFG, str(tmp_path))
  again = prepared.attach(records, CFG, str(tmp_path), build=False)
  assert again[2]["image_store"].path == built[2]["image_store"].path
