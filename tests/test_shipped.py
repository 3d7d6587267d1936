"""The model shipped in the package: loads offline, scores deterministically, and
(when ../shared/data is present) reaches the validation SRCC its card states."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bmqa_jax import metrics
from bmqa_jax.bmqa import scoring
from bmqa_jax.bmqa import shipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data", "biq2021_lowlight")


@pytest.fixture(scope="module")
def reference():
  with open(os.path.join(shipped.ASSET_DIR, "reference.json")) as f:
    return json.load(f)


def test_files_are_complete_and_small():
  names = set(os.listdir(shipped.ASSET_DIR))
  assert {"config.json", "heads.safetensors", "MODEL_CARD.md", "reference.json"} <= names
  assert os.path.getsize(os.path.join(shipped.ASSET_DIR, "heads.safetensors")) < 10e6
  card = open(os.path.join(shipped.ASSET_DIR, "MODEL_CARD.md")).read()
  assert "Licence of the data" in card and "BIQ2021" in card


def test_scores_the_reference_photos_as_when_built(tmp_path, reference):
  paths = shipped.reference_photos(str(tmp_path))
  got = {os.path.basename(r.path): r.score for r in scoring.iter_scores("", paths, progress=False)}
  again = {
    os.path.basename(r.path): r.score for r in scoring.iter_scores("", paths, progress=False)
  }
  assert got == again  # deterministic
  for name, want in reference["photos"].items():
    assert got[name] == pytest.approx(want, abs=1e-4), name


def test_score_cli_without_workdir_uses_the_shipped_model(tmp_path, reference):
  paths = shipped.reference_photos(str(tmp_path / "photos"))
  (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  out = tmp_path / "scores.csv"
  cmd = [sys.executable, "launch/score.py", f"--out={out}", str(tmp_path / "photos")]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1, proc.stderr[-2000:]  # one file failed
  assert "shipped model" in proc.stderr and "1 of 5 file(s)" in proc.stderr
  rows = out.read_text().splitlines()
  assert rows[0] == "path,score,error" and len(rows) == 6
  scored = {
    os.path.basename(r.split(",")[0]): float(r.split(",")[1]) for r in rows[1:] if r.split(",")[1]
  }
  for name, want in reference["photos"].items():
    assert scored[name] == pytest.approx(want, abs=1e-4)
  # Running it again resumes: the scored files are kept, the broken one retried.
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1 and proc.stdout.count("\n") == 1, proc.stdout
  assert paths[0] not in proc.stdout


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is absent")
def test_reaches_its_stated_validation_srcc(reference):
  import csv  # pylint: disable=g-import-not-at-top

  with open(os.path.join(SHARED, "manifest.csv"), newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == "val"]
  paths = [os.path.join(SHARED, r["image"]) for r in rows]
  scores = [r.score for r in scoring.iter_scores("", paths, progress=False)]
  srcc = metrics.srcc(np.array(scores), np.array([float(r["mos"]) for r in rows]))
  assert srcc == pytest.approx(reference["val"]["srcc"], abs=2e-3)
  assert srcc >= 0.85


# --- the shipped files are verified before use ----------------------------------


def test_digests_match_the_shipped_files():
  """SHA256SUMS lists every shipped file with its sha256 (a rebuild rewrites
  it: bmqa-build-shipped-model)."""
  digests = shipped.read_digests(shipped.ASSET_DIR)
  files = {n for n in os.listdir(shipped.ASSET_DIR) if n != shipped.DIGESTS}
  assert set(digests) == files
  shipped.verify()


def _copy(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  out = str(tmp_path / "model")
  shutil.copytree(shipped.ASSET_DIR, out)
  return out


def _score(asset_dir, paths):
  return {
    os.path.basename(r.path): r.score
    for r in scoring.iter_scores("", paths, progress=False, asset_dir=asset_dir)
  }


@pytest.mark.parametrize("field,value", [("native_crop", 384), ("mode", "resize")])
def test_an_edited_config_is_refused_naming_the_file(tmp_path, field, value):
  """Editing `native_crop` or `mode` changed scores on main; the digest stops it."""
  model = _copy(tmp_path)
  path = os.path.join(model, "config.json")
  with open(path) as f:
    cfg = json.load(f)
  cfg["input"][field] = value
  with open(path, "w") as f:
    json.dump(cfg, f, indent=1, sort_keys=True)
  paths = shipped.reference_photos(str(tmp_path / "photos"))
  with pytest.raises(shipped.ShippedModelError, match=r"config\.json is damaged or was edited"):
    _score(model, paths)


def test_a_nan_bias_is_refused_naming_the_file(tmp_path):
  """A NaN in one bias made every score `nan` on main."""
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top

  model = _copy(tmp_path)
  path = os.path.join(model, "heads.safetensors")
  heads = st_numpy.load_file(path)
  name = next(k for k in sorted(heads) if k.endswith("bias"))
  heads[name] = heads[name].copy()
  heads[name].flat[0] = np.nan
  st_numpy.save_file(heads, path)
  with pytest.raises(shipped.ShippedModelError, match=r"heads\.safetensors is damaged"):
    shipped.load(model)


def test_flipped_bytes_give_a_named_error_or_the_reference_scores(tmp_path, reference):
  """Fuzz: random bytes flipped (fixed seeds) in a copy of each shipped file that
  a score reads give a `ShippedModelError` naming the file, or (never, with the
  digests) exactly the reference scores: never a different number."""
  paths = shipped.reference_photos(str(tmp_path / "photos"))
  rng = np.random.default_rng(27)
  for trial in range(6):
    name = ("config.json", "heads.safetensors")[trial % 2]
    model = _copy(tmp_path / str(trial))
    path = os.path.join(model, name)
    data = bytearray(open(path, "rb").read())
    for i in rng.choice(len(data), size=int(rng.integers(1, 2000)), replace=False):
      data[i] ^= int(rng.integers(1, 256))
    open(path, "wb").write(bytes(data))
    try:
      got = _score(model, paths)
    except shipped.ShippedModelError as e:
      assert name in str(e)
      continue
    assert got == reference["photos"], (trial, got)
