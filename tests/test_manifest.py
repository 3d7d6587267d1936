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
  path.write_text(
    "\n".join(
      json.dumps(r) for r in [{"image": "a.jpg", "mos": 0.1, "scene": "x", "text": "a dim room"}]
    )
  )
  (s,) = manifest.load(str(path), require_text=True)
  assert s.text == "a dim room"


@pytest.mark.parametrize(
  "row,message",
  [
    ("missing.jpg,0.5,s1", "missing.jpg' does not exist"),
    ("mixed.jpg,0.5,s1", "did you mean 'Mixed.JPG'"),
    ("broken.jpg,0.5,s1", "broken.jpg"),
    ("a.jpg,nan,s1", "not a finite number"),
    ("a.jpg,,s1", "no MOS"),
    ("a.jpg,1.5,s1", "outside [0.0, 1.0]"),
    ("a.jpg,abc,s1", "is not a number"),
  ],
)
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
  path = _write(folder, ["a.jpg,0.5,s1", "missing.jpg,0.5,s2", "b.jpg,nan,s3"])
  logs = []
  samples = manifest.load(path, skip_bad=True, log=logs.append)
  assert len(samples) == 1
  assert logs and logs[0].startswith("skipped 2 bad row(s)")


def test_split_filter(folder):
  path = _write(folder, ["a.jpg,0.5,s1,train", "b.jpg,0.5,s2,test"], header="image,mos,scene,split")
  assert [s.scene for s in manifest.load(path, splits=["test"])] == ["s2"]


# --- Hardening: encodings, malformed rows, splits -------------------------------


def test_csv_with_bom_reads(folder):
  path = folder / "m.csv"
  path.write_bytes("image,mos,scene\na.jpg,0.5,s1\n".encode("utf-8-sig"))
  (s,) = manifest.load(str(path))
  assert s.mos == 0.5 and s.row == 2


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_latin1_is_named(folder, suffix):
  path = folder / f"m{suffix}"
  if suffix == ".csv":
    body = "image,mos,scene,text\na.jpg,0.5,s1,ok\nb.jpg,0.5,s2,très sombre\n"
  else:
    body = (
      '{"image": "a.jpg", "mos": 0.5, "scene": "s1"}\n'
      '{"image": "b.jpg", "mos": 0.5, "scene": "s2", "text": "très"}\n'
    )
  path.write_bytes(body.encode("latin-1"))
  with pytest.raises(
    manifest.ManifestError,
    match=r"m\.\w+, line 3: byte 0xe8 is not UTF-8"
    if suffix == ".csv"
    else r"m\.jsonl, line 2: byte 0xe8",
  ):
    manifest.load(str(path))
  with pytest.raises(manifest.ManifestError, match="not UTF-8"):
    manifest.read_rows(str(path))


def _jsonl(folder, lines, name="m.jsonl"):
  path = folder / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


GOOD = json.dumps({"image": "a.jpg", "mos": 0.5, "scene": "s1"})


def test_json_array_file_is_refused(folder):
  rows = [{"image": "a.jpg", "mos": 0.5, "scene": "s1"}]
  for text in (json.dumps(rows), json.dumps(rows, indent=2)):
    (folder / "m.json").write_text(text)
    with pytest.raises(manifest.ManifestError, match=r"m\.json, row 1: .*one JSON array"):
      manifest.load(str(folder / "m.json"))


@pytest.mark.parametrize(
  "line,message",
  [
    ('["a.jpg", 0.5, "s1"]', "a JSON list, not an object"),
    ('"a.jpg"', "a JSON str, not an object"),
    ("{not json", "not valid JSON"),
    ('{"image": "a.jpg", "mos": 0.5, "scene": {"id": 1}}', "field 'scene' is a dict"),
    (
      json.dumps({"image": "a.jpg", "mos": 0.5, "scene": "s", "text": "x" * 131_073}),
      "field 'text' is longer than 131072",
    ),
    ('{"image": "a.jpg", "mos": true, "scene": "s2"}', "MOS True is not a number"),
    ('{"image": "a.jpg", "mos": [0.5], "scene": "s2"}', "field 'mos' is a list"),
    ('{"image": "a.jpg", "mos": 0.5, "scene": ""}', "empty `scene`"),
  ],
)
def test_bad_jsonl_rows_are_named_and_skippable(folder, line, message):
  path = _jsonl(folder, [GOOD, "", line])  # the bad row is line 3
  with pytest.raises(manifest.ManifestError) as e:
    manifest.load(path)
  assert "m.jsonl, row 3: " + message in str(e.value)
  logs = []
  samples = manifest.load(path, skip_bad=True, log=logs.append)
  assert [s.row for s in samples] == [1]
  assert logs[0].startswith("skipped 1 bad row(s)") and message in logs[0]


def test_numeric_jsonl_scene_and_boolean_csv_text(folder):
  path = _jsonl(folder, [json.dumps({"image": "a.jpg", "mos": 1, "scene": 0})])
  (s,) = manifest.load(path)
  assert s.scene == "0" and s.mos == 1.0
  csv_path = _write(folder, ["a.jpg,true,s1"])  # a CSV's "true" is text, not a number
  with pytest.raises(manifest.ManifestError, match="row 2: MOS 'true' is not a number"):
    manifest.load(csv_path)


def test_overlong_csv_field_is_named_and_skippable(folder):
  path = _write(
    folder,
    ["a.jpg,0.5,s1,ok", "b.jpg,0.5,s2," + "x" * 131_073, "b.jpg,0.5,s3,ok"],
    header="image,mos,scene,text",
  )
  # (the csv module's own limit, or ours when the process raised the csv limit)
  with pytest.raises(
    manifest.ManifestError, match=r"m\.csv, row 3: .*(field larger than|longer than 131072)"
  ):
    manifest.load(path)
  logs = []
  assert [s.scene for s in manifest.load(path, skip_bad=True, log=logs.append)] == ["s1", "s3"]
  assert "row 3" in logs[0]


def test_csv_field_counts(folder):
  path = _write(folder, ["a.jpg,0.5,s1,extra", "b.jpg,0.5,s2,,", "b.jpg,0.5"])
  with pytest.raises(manifest.ManifestError, match=r"row 2: 4 fields, but the header has 3"):
    manifest.load(path)
  logs = []
  samples = manifest.load(path, skip_bad=True, log=logs.append)
  assert [s.row for s in samples] == [3]  # empty extra fields are fine
  assert "row 4: empty `scene`" in logs[0]


def test_manifest_without_split_column(folder):
  path = _write(folder, ["a.jpg,0.5,s1", "b.jpg,0.5,s2"])
  assert len(manifest.load(path)) == 2  # e.g. baselines, repeated scene-wise splits
  rows, _ = manifest.read_rows(path)
  assert [r["scene"] for r in rows] == ["s1", "s2"]
  with pytest.raises(manifest.ManifestError, match="has no `split` column.*write_split_manifest"):
    manifest.load(path, splits=["train"])


def test_scene_in_two_splits_is_refused(folder):
  path = _write(
    folder,
    ["a.jpg,0.5,s1,train", "b.jpg,0.5,s2,test", "b.jpg,0.5,s1,test", "a.jpg,0.5,s3,"],
    header="image,mos,scene,split",
  )
  for kwargs in ({}, {"splits": ["train"]}, {"skip_bad": True}):
    with pytest.raises(manifest.ManifestError) as e:
      manifest.load(path, **kwargs)
    assert "m.csv, row 4: scene 's1' is in split 'test' here but in 'train' at row 2" in str(
      e.value
    )
  manifest.check_scene_splits(
    [(2, {"scene": "s", "split": "train"}), (3, {"scene": "s", "split": ""})], "x"
  )  # no split: fine


@pytest.mark.parametrize(
  "name", ["../evil.jpg", "/tmp/evil.jpg", "a/../../evil.jpg", "", ".", "a/..", "x\0.jpg"]
)
def test_safe_join_refuses_names_leaving_the_folder(tmp_path, name):
  root = str(tmp_path / "export" / "files")
  with pytest.raises(manifest.ManifestError, match=r"mliq, split 'train', example 7: file name"):
    manifest.safe_join(root, name, "mliq, split 'train', example 7")


def test_safe_join_keeps_names_inside_and_refuses_symlinks_out(tmp_path):
  root = tmp_path / "export"
  root.mkdir()
  assert manifest.safe_join(str(root), "a/b.jpg") == str(root / "a" / "b.jpg")
  assert manifest.safe_join(str(root), "a/../b.jpg") == str(root / "b.jpg")
  assert manifest.safe_join(str(root), "..b.jpg") == str(root / "..b.jpg")
  (root / "out").symlink_to(tmp_path)
  with pytest.raises(manifest.ManifestError, match="outside"):
    manifest.safe_join(str(root), "out/evil.jpg")
