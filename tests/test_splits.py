"""Scene-wise random splits and the repeated-splits protocol (Sec. 5.1.1)."""

import csv
import json
import os

import numpy as np
import pytest

from bmqa_jax.data import scenes as splits
from bmqa_jax.experiments import repeated
from bmqa_jax.data import manifest as manifest_lib


def _scenes(n):
  return [f"scene{i:03d}" for i in range(n)]


def test_scene_split_fractions_and_determinism():
  scenes = _scenes(720)  # MLIQ: 576 / 72 / 72 scenes
  a = splits.scene_split(scenes, seed=3)
  counts = {s: sum(v == s for v in a.values()) for s in splits.SPLIT_NAMES}
  assert counts == {"train": 576, "val": 72, "test": 72}
  assert a == splits.scene_split(list(reversed(scenes)), seed=3)  # order-free
  b = splits.scene_split(scenes, seed=4)
  assert a != b
  # Different seeds draw different test scenes (not a rotation of one order).
  test_a = {k for k, v in a.items() if v == "test"}
  test_b = {k for k, v in b.items() if v == "test"}
  assert len(test_a & test_b) < 30


def test_small_scene_counts_keep_every_split_nonempty():
  a = splits.scene_split(_scenes(3), seed=0)
  assert sorted(a.values()) == ["test", "train", "val"]
  with pytest.raises(ValueError, match="cannot be split"):
    splits.scene_split(_scenes(2), seed=0)


def _write_manifest(path, scenes, captures=5):
  os.makedirs(os.path.join(os.path.dirname(path), "img"), exist_ok=True)
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "mos", "scene", "split", "device"])
    for s in scenes:
      for c in range(captures):
        name = f"img/{s}_{c}.jpg"
        open(os.path.join(os.path.dirname(path), name), "wb").close()
        w.writerow([name, 0.5, s, "train", f"dev{c}"])


def test_split_manifest_never_puts_a_scene_in_two_splits(tmp_path):
  src = str(tmp_path / "data" / "manifest.csv")
  _write_manifest(src, _scenes(40))
  dst = str(tmp_path / "out" / "split.csv")
  assign = splits.write_split_manifest(src, dst, seed=1)
  samples = manifest_lib.load(dst, check_images=False)  # paths still resolve
  assert len(samples) == 200
  by_scene = {}
  for s in samples:
    by_scene.setdefault(s.scene, set()).add(s.split)
    assert os.path.exists(s.image)
  assert all(len(v) == 1 for v in by_scene.values())
  assert {k: v.pop() for k, v in by_scene.items()} == assign
  assert sum(v == "test" for v in assign.values()) == 4
  # A pretraining manifest follows the same assignment; unknown scenes train.
  pre = str(tmp_path / "data" / "pre.csv")
  _write_manifest(pre, _scenes(40) + ["extra"], captures=1)
  got = splits.write_split_manifest(pre, str(tmp_path / "out" / "pre.csv"), 9, assignment=assign)
  assert got["extra"] == "train"
  assert all(got[k] == v for k, v in assign.items())


def test_split_manifest_names_a_row_without_scene(tmp_path):
  src = str(tmp_path / "manifest.csv")
  with open(src, "w") as f:
    f.write("image,mos,scene\na.jpg,0.5,s1\nb.jpg,0.4,\n")
  with pytest.raises(manifest_lib.ManifestError, match="row 3: empty `scene`"):
    splits.write_split_manifest(src, str(tmp_path / "o.csv"), 0)


def test_repeated_splits_tiny_run_and_resume(tmp_path, monkeypatch):
  """Two tiny trainings; a finished split's metrics are aggregated as stored (not
  recomputed); a metrics.json of another config is not taken as finished; a
  changed config is refused instead of mixing results."""
  from bmqa_jax.configs import quickstart  # pylint: disable=g-import-not-at-top
  from bmqa_jax.train_lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("BMQA_DATA_DIR", str(tmp_path / "data"))
  cfg = quickstart.get_config("modalities=image,tiny=True")
  cfg.data.builtin = dict(cfg.data.builtin.to_dict(), workers=1)
  cfg.st.epochs = 1
  cfg.st.eval_split = ""  # the test split is evaluated anyway
  workdir = str(tmp_path / "rs")
  logs = []
  repeated.run_repeated(cfg, workdir, num_splits=2, first_seed=5, log=logs.append)
  rows = list(csv.DictReader(open(os.path.join(workdir, "split_005", "manifest.csv"))))
  test_scenes = {r["scene"] for r in rows if r["split"] == "test"}
  assert test_scenes == {
    k for k, v in splits.scene_split([r["scene"] for r in rows], 5).items() if v == "test"
  }
  per = json.load(open(os.path.join(workdir, "split_005", "eval", "metrics.json")))
  assert per["overall"]["n"] == sum(r["split"] == "test" for r in rows) == 10
  assert per["dataset"].startswith("test split of") and "split_005" in per["dataset"]
  # Split 6's stored metrics (same config) are what is aggregated.
  path6 = os.path.join(workdir, "split_006", "eval", "metrics.json")
  m6 = json.load(open(path6))
  done = {"plcc": 0.25, "srcc": -0.5, "krcc": 0.1, "rmse": 0.3, "n": 10}
  m6["overall"] = done
  json.dump(m6, open(path6, "w"))
  logs.clear()
  res = repeated.run_repeated(cfg, workdir, num_splits=2, first_seed=5, log=logs.append)
  assert res["seeds"] == [5, 6]
  assert sum("finished earlier, skipping" in str(m) for m in logs) == 2
  srcc = [per["overall"]["srcc"], done["srcc"]]
  st = res["statistics"]["srcc"]
  assert st["mean"] == pytest.approx(np.mean(srcc))
  assert st["std"] == pytest.approx(np.std(srcc, ddof=1))
  assert st["median"] == pytest.approx(np.median(srcc))
  assert "| srcc |" in open(os.path.join(workdir, "repeated_splits.md")).read()
  assert "plcc_logistic4" not in res["statistics"]  # split 6 does not report it
  # Metrics of another config (hash) are not a finished split: evaluated again.
  m6["config_sha256"] = "0" * 64
  json.dump(m6, open(path6, "w"))
  logs.clear()
  again = repeated.run_repeated(cfg, workdir, num_splits=2, first_seed=5, log=logs.append)
  assert any("[split 6] stale: config changed" in str(m) for m in logs)
  assert again["per_split"][6]["srcc"] == pytest.approx(per6_srcc(workdir))
  assert again["per_split"][6] != done
  # A changed config is refused, never mixed with the finished splits.
  cfg.st.learning_rate *= 2
  with pytest.raises(workdir_lib.ConfigChangedError, match="st.learning_rate"):
    repeated.run_repeated(cfg, workdir, num_splits=2, first_seed=5, log=logs.append)


def per6_srcc(workdir):
  with open(os.path.join(workdir, "split_006", "eval", "metrics.json")) as f:
    return json.load(f)["overall"]["srcc"]
