"""Bad manifest rows fail before training with the file and row named."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from bmqa_jax.data import manifest


@pytest.fixture
def folder(tmp_path):
  img = (np.random.default_rng(0).uniform(0, 255, (20, 24, 3))).astype(np.uint8)
  for name in ("a.jpg", "b.jpg", "Mixed.JPG"):
    Image.fromarray(img).save(tmp_path / name, format="JPEG")
  with open(tmp_path / "broken.jpg", "wb") as f:
    f.write(open(tmp_path / "a.jpg", "rb").read()[:200])  # truncated
  return tmp_path


def _write(folder, rows, header="image,mos,scene"):
  path = folder / "m.csv"
  path.write_text(header + "\n" + "\n".join(rows) + "\n")
  return str(path)


def test_reads_good_rows(folder):
  path = _write(folder, ["a.jpg,0.5,s1", "b.jpg,0.25,s2"])
  samples = manifest.load(path)
  assert [s.mos for s in samples] == [0.5, 0.25]
  assert samples[0].image == os.path.join(str(folder), "a.jpg")
  assert samples[1].row == 3


def test_jsonl(folder):
  path = folder / "m.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in [
      {"image": "a.jpg", "mos": 0.1, "scene": "x", "text": "a dim room"}]))
  (s,) = manifest.load(str(path), require_text=True)
  assert s.text == "a dim room"


@pytest.mark.parametrize("row,message", [
    ("missing.jpg,0.5,s1", "missing.jpg' does not exist"),
    ("mixed.jpg,0.5,s1", "did you mean 'Mixed.JPG'"),
    ("broken.jpg,0.5,s1", "broken.jpg"),
    ("a.jpg,nan,s1", "not a finite number"),
    ("a.jpg,,s1", "no MOS"),
    ("a.jpg,1.5,s1", "outside [0.0, 1.0]"),
    ("a.jpg,abc,s1", "is not a number"),
])
def test_bad_rows_are_named(folder, row, message):
  path = _write(folder, ["b.jpg,0.5,s0", row])
  with pytest.raises(manifest.ManifestError) as e:
    manifest.load(path)
  assert message in str(e.value)
  assert "row 3" in str(e.value)


def test_missing_column(folder):
  path = _write(folder, ["a.jpg,s1"], header="image,scene")
  with pytest.raises(manifest.ManifestError, match=r"lacks the column\(s\) \['mos'\]"):
    manifest.load(path)


def test_unreadable_audio(folder):
  (folder / "x.wav").write_bytes(b"not a wav file")
  path = _write(folder, ["a.jpg,0.5,s1,x.wav"], header="image,mos,scene,audio")
  with pytest.raises(manifest.ManifestError, match="x.wav' is unreadable"):
    manifest.load(path, check_audio=True)


def test_skip_bad_rows_counts(folder):
  path = _write(folder, ["a.jpg,0.5,s1", "missing.jpg,0.5,s2", "a.jpg,nan,s3"])
  logs = []
  samples = manifest.load(path, skip_bad=True, log=logs.append)
  assert len(samples) == 1
  assert logs and logs[0].startswith("skipped 2 bad row(s)")


def test_split_filter(folder):
  path = _write(folder, ["a.jpg,0.5,s1,train", "b.jpg,0.5,s2,test"],
                header="image,mos,scene,split")
  assert [s.scene for s in manifest.load(path, splits=["test"])] == ["s2"]
