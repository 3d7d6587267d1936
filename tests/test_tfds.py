"""TFDS builders: build from files the test makes, read back with Grain, errors.

The builders need TensorFlow (the `tfds` extra); without it this file skips.
"""

import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")
from bmqa_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
from bmqa_jax.data import scenes as splits_lib  # pylint: disable=g-import-not-at-top
from bmqa_jax.data import image_io  # pylint: disable=g-import-not-at-top
from bmqa_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top


def _jpeg(path, rng, size=(20, 28)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


def _biq_folder(root, rng):
  """BIQ2021's published layout: Images/, Train.csv, Test.csv ("Image Name","MOS")."""
  mos = {}
  for split, n in (("Train", 20), ("Test", 5)):
    lines = ["Image Name,MOS"]
    for i in range(n):
      name = f"ss0{1 + i % 3} ({split.lower()}{i}).jpg"
      _jpeg(os.path.join(root, "Images", name), rng)
      m = -0.004 if (split, i) == ("Train", 0) else round(float(rng.uniform(0, 1)), 4)
      mos[name] = m
      lines.append(f"{name},{m}")
    with open(os.path.join(root, f"{split}.csv"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return mos


def _folder(root, rng):
  """A generic folder: 16-bit PNGs and JPEGs, MOS on a 1..5 scale, 3 captures/scene."""
  lines = ["file,score,place"]
  for s in range(10):
    for c in range(3):
      if c == 0:
        name = f"pics/s{s}_{c}.png"
        os.makedirs(os.path.join(root, "pics"), exist_ok=True)
        Image.fromarray(rng.integers(0, 65535, (16, 24), dtype=np.uint16)).save(
          os.path.join(root, name)
        )
      else:
        name = f"pics/s{s}_{c}.jpg"
        _jpeg(os.path.join(root, name), rng)
      lines.append(f"{name},{1 + 4 * rng.uniform():.3f},scene{s}")
  with open(os.path.join(root, "ratings.csv"), "w") as f:
    f.write("\n".join(lines) + "\n")


CUSTOM = dict(
  name="mine",
  scores_csv="ratings.csv",
  image_column="file",
  mos_column="score",
  scene_column="place",
  mos_min=1.0,
  mos_max=5.0,
  seed=3,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  rng = np.random.default_rng(0)
  base = tmp_path_factory.mktemp("tfds")
  data_dir = str(base / "prepared")
  biq_mos = _biq_folder(str(base / "biq"), rng)
  tfds_builders.build("biq2021", str(base / "biq"), data_dir)
  _folder(str(base / "folder"), rng)
  tfds_builders.build(
    "iqa_folder", str(base / "folder"), data_dir, tfds_builders.IqaConfig(**CUSTOM)
  )
  return dict(base=base, data_dir=data_dir, biq_mos=biq_mos)


def test_biq2021_reads_back_with_official_split(built):
  src = tfds_builders.data_sources("biq2021", built["data_dir"])
  assert {k: len(v) for k, v in src.items()} == {"train": 18, "val": 2, "test": 5}
  names = {}
  for split, s in src.items():
    for ex in tfds_builders.grain_dataset(s):  # Grain reads the TFDS source
      name = ex["filename"].decode()
      names[name] = split
      with open(os.path.join(built["base"], "biq", "Images", name), "rb") as f:
        assert ex["image"] == f.read()  # stored as published, byte for byte
      assert ex["mos"] == pytest.approx(max(0.0, built["biq_mos"][name]), abs=1e-6)
  assert {n for n, s in names.items() if s == "test"} == {
    n for n in built["biq_mos"] if "(test" in n
  }
  assert len(names) == 25


def test_export_manifest_feeds_the_pipeline(built):
  from bmqa_jax import defaults  # pylint: disable=g-import-not-at-top
  from bmqa_jax.data import datasets  # pylint: disable=g-import-not-at-top

  cfg = defaults.base_config()
  cfg.data.kind = "tfds"
  cfg.data.tfds_name = "iqa_folder/mine"
  cfg.data.tfds_dir = built["data_dir"]
  logs = []
  path, _ = datasets.manifest_paths(cfg, log=logs.append)
  assert len(logs) == 1 and "exporting" in logs[0]
  samples = manifest_lib.load(path)  # decodes every image (16-bit PNGs included)
  assert len(samples) == 30
  by_scene = {}
  for s in samples:
    by_scene.setdefault(s.scene, set()).add(s.split)
  assert all(len(v) == 1 for v in by_scene.values())  # scene-wise
  want = splits_lib.scene_split([f"scene{i}" for i in range(10)], seed=3)
  assert {k: v.pop() for k, v in by_scene.items()} == want
  png = [s for s in samples if s.image.endswith(".png")][0]
  orig = os.path.join(built["base"], "folder", "pics", os.path.basename(png.image))
  np.testing.assert_array_equal(image_io.read_image(png.image), image_io.read_image(orig))
  with open(os.path.join(built["base"], "folder", "ratings.csv")) as f:
    raw = {r.split(",")[0]: float(r.split(",")[1]) for r in f.read().split()[1:]}
  for s in samples:
    key = "pics/" + os.path.basename(s.image)
    assert s.mos == pytest.approx((raw[key] - 1) / 4, abs=1e-5)
  logs.clear()
  assert datasets.manifest_paths(cfg, log=logs.append)[0] == path and not logs


def test_missing_files_are_named(tmp_path):
  rng = np.random.default_rng(1)
  _biq_folder(str(tmp_path), rng)
  os.remove(os.path.join(tmp_path, "Images", "ss02 (train1).jpg"))
  os.remove(os.path.join(tmp_path, "Images", "ss01 (test3).jpg"))
  cfg = tfds_builders.Biq2021.BUILDER_CONFIGS[0]
  with pytest.raises(tfds_builders.MissingFilesError) as e:
    tfds_builders.read_layout(str(tmp_path), cfg, "LAYOUT")
  msg = str(e.value)
  assert "2 file(s)" in msg and "ss02 (train1).jpg" in msg and "ss01 (test3).jpg" in msg
  assert msg.rstrip().endswith("LAYOUT")
  os.remove(os.path.join(tmp_path, "Test.csv"))
  with pytest.raises(tfds_builders.MissingFilesError, match="Test.csv"):
    tfds_builders.read_layout(str(tmp_path), cfg, "LAYOUT")


def test_builder_error_names_missing_files_and_layout(tmp_path):
  manual = tmp_path / "mliq"
  manual.mkdir()
  (manual / "mliq.csv").write_text(
    "image,mos,scene,device,text,audio\na.jpg,0.5,s1,huawei,a dark room,a.wav\n"
  )
  with pytest.raises(tfds_builders.MissingFilesError) as e:
    tfds_builders.build("mliq", str(manual), str(tmp_path / "out"))
  msg = str(e.value)
  assert os.path.join(str(manual), "images", "a.jpg") in msg
  assert os.path.join(str(manual), "audio", "a.wav") in msg
  assert "mliq.csv      columns image,mos,scene,device,text" in msg
