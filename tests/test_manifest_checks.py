"""Manifest rows that would leak or silently change the data are refused with
the rows named, the cheap columns are checked on every row before any image is
decoded, and a manifest without `split` is split 8:1:1 by scene with the
config's seed (README, docs/interfaces.md)."""

import collections
import os

import numpy as np
import pytest
from PIL import Image

from bmqa_jax.configs import quickstart
from bmqa_jax.data import datasets
from bmqa_jax.data import image_io
from bmqa_jax.data import manifest
from bmqa_jax.data import scenes


@pytest.fixture
def folder(tmp_path):
  img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
  for name in ("a.jpg", "b.jpg"):
    Image.fromarray(img).save(tmp_path / name)
  return tmp_path


def _write(folder, rows, header="image,mos,scene,split", name="m.csv"):
  path = folder / name
  path.write_text(header + "\n" + "\n".join(rows) + "\n")
  return str(path)


def test_an_image_under_two_scenes_or_twice_is_refused_with_both_rows(folder):
  path = _write(folder, ["a.jpg,0.5,s1,train", "b.jpg,0.5,s3,train", "./a.jpg,0.4,s2,val"])
  with pytest.raises(
    manifest.ManifestError,
    match=r"m.csv, row 4: image .*a.jpg' is under scene 's2' here "
    r"and 's1' at row 2: the same photo in two scenes or splits",
  ):
    manifest.load(path, splits=["train"])  # whichever split is read
  with pytest.raises(manifest.ManifestError, match="row 4: .* at row 2"):
    manifest.load(path, skip_bad=True)  # a leak is never skipped
  path = _write(folder, ["a.jpg,0.5,s1,train", "b.jpg,0.5,s3,train", "a.jpg,0.4,s1,train"])
  with pytest.raises(
    manifest.ManifestError, match=r"row 4: image .*a.jpg' is listed twice \(rows 2 and 4\)"
  ):
    manifest.load(path)
  assert len(manifest.load(path, require_mos=False)) == 3  # captions: several per image


def test_a_duplicated_column_is_refused(folder):
  path = _write(folder, ["a.jpg,0.5,s1,train,0.9"], header="image,mos,scene,split,mos")
  with pytest.raises(
    manifest.ManifestError, match=r"m.csv, row 1: column 'mos' appears twice \(columns 2 and 5\)"
  ):
    manifest.load(path)
  path = folder / "m.jsonl"
  path.write_text(
    '{"image": "b.jpg", "mos": 0.5, "scene": "s0"}\n'
    '{"image": "a.jpg", "mos": 0.5, "scene": "s1", "mos": 0.9}\n'
  )
  with pytest.raises(manifest.ManifestError, match="row 2: key 'mos' appears twice"):
    manifest.load(str(path))


def test_a_folder_given_as_an_image_says_so(folder):
  os.mkdir(folder / "photos")
  path = _write(folder, ["a.jpg,0.5,s1,train", "photos,0.5,s2,train"])
  with pytest.raises(
    manifest.ManifestError, match=r"row 3: image '.*photos' is a folder, not a file"
  ):
    manifest.load(path)


def test_cheap_columns_of_every_row_are_checked_before_any_image_is_decoded(folder, monkeypatch):
  for i in range(2000):
    os.link(folder / "a.jpg", folder / f"{i}.jpg")
  rows = [f"{i}.jpg,0.5,s{i},train" for i in range(2000)]
  decoded = collections.Counter()
  read = image_io.read_image_uint8
  monkeypatch.setattr(
    image_io, "read_image_uint8", lambda p, **kw: decoded.update([p]) or read(p, **kw)
  )
  for bad, message in (
    ("1999.jpg,1.5,s1999,train", r"MOS 1.5 is outside \[0.0, 1.0\]"),
    ("1999.jpg,nan,s1999,train", "MOS is nan"),
    ("1999.jpg,0.5,s1998,val", "scene 's1998' is in split 'val'"),
    ("0.jpg,0.5,s1999,train", "image .*0.jpg' is under scene"),
  ):
    path = _write(folder, rows[:-1] + [bad])
    with pytest.raises(manifest.ManifestError, match="row 2001: " + message):
      manifest.load(path)
    assert not decoded  # found without decoding one image
  assert len(manifest.load(_write(folder, rows))) == 2000
  assert len(decoded) == 2000


def _no_split_manifest(folder, scenes_n=20, per_scene=3):
  rows = []
  for s in range(scenes_n):
    for k in range(per_scene):
      name = f"{s}_{k}.jpg"
      os.link(folder / "a.jpg", folder / name)
      rows.append(f"{name},{(s * per_scene + k) / 100:.2f},Scene {s}")
  return _write(folder, rows, header="image,mos,scene", name="nosplit.csv")


def test_rows_without_a_split_are_split_8_1_1_by_scene_with_the_config_seed(folder, tmp_path):
  path = _no_split_manifest(folder)
  cfg = quickstart.get_config("modalities=image")
  cfg.data.kind, cfg.data.manifest = "manifest", path
  assert (cfg.data.train_split, cfg.data.val_split, cfg.data.test_split) == ("train", "val", "test")
  cfg.seed = 3
  data = datasets.load(cfg, str(tmp_path / "w"), ("train", "val", "test"), log=print)
  by_split = {k: {s.scene for s in v} for k, v in data.splits.items()}
  assert {k: len(v) for k, v in by_split.items()} == {"train": 16, "val": 2, "test": 2}
  assert sum(len(v) for v in data.splits.values()) == 60  # every row, once
  assert not (
    by_split["train"] & by_split["val"]
    or by_split["train"] & by_split["test"]
    or by_split["val"] & by_split["test"]
  )  # scenes never cross
  want = scenes.scene_split([manifest.scene_key(f"Scene {s}") for s in range(20)], 3)
  for split, samples in data.splits.items():
    assert all(want[manifest.scene_key(s.scene)] == split == s.split for s in samples)
  again = datasets.load(cfg, str(tmp_path / "w"), ("val",), log=print)
  assert [s.row for s in again.splits["val"]] == [s.row for s in data.splits["val"]]
  cfg.seed = 4
  other = datasets.load(cfg, str(tmp_path / "w"), ("val",), log=print)
  assert {s.scene for s in other.splits["val"]} != by_split["val"]


def test_the_config_pixel_bound_reaches_the_image_check(folder, tmp_path):
  """`config.input.max_pixels` is what `datasets.load` checks images against."""
  cfg = quickstart.get_config("modalities=image")
  cfg.data.kind = "manifest"
  cfg.data.manifest = _write(folder, ["a.jpg,0.5,s1,test", "b.jpg,0.6,s2,test"])
  cfg.data.check_images = True
  assert len(datasets.load(cfg, str(tmp_path / "w"), ("test",)).splits["test"]) == 2
  cfg.input.max_pixels = 100
  with pytest.raises(manifest.ManifestError, match="24x20"):
    datasets.load(cfg, str(tmp_path / "w"), ("test",))
