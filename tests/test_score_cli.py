"""`bmqa-score` (launch/score.py) on folders, globs and `--out` files, as users
run it: the shipped model, then another model on the same `--out`.

Reproduced before: folders with links back up (`sub/up -> ..`) made `**` globs
score a photo 41 times, or never return with two such links; a pattern that
matched nothing was silently dropped; `.gif` files were skipped in folders but
scored when named; `--out` kept another model's scores, counted a NaN score as
done, overwrote an unrelated `notes.csv`, and gave a traceback for a folder, a
manifest or a JSON object.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

from bmqa_jax.bmqa import score_log
from bmqa_jax.bmqa import scoring
from bmqa_jax.bmqa import shipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE_BMQA = os.path.join(ROOT, "tests", "data", "release_0_1", "bmqa")


def _score(*args, cwd):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
  )
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "launch", "score.py"), *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Four photos (one a GIF) in a tree with two links back up, a broken JPEG."""
  root = tmp_path_factory.mktemp("score")
  photos = root / "photos"
  paths = shipped.reference_photos(str(photos / "a" / "b"))
  os.rename(paths[0], photos / os.path.basename(paths[0]))
  from PIL import Image  # pylint: disable=g-import-not-at-top

  Image.open(paths[1]).convert("P").save(photos / "a" / "coffee.gif")
  os.remove(paths[1])
  os.symlink("..", photos / "a" / "up")
  os.symlink("../..", photos / "a" / "b" / "up2")
  (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  return root


def test_folders_globs_each_file_once(folder):
  out = folder / "m.csv"
  proc = _score(
    "--out=m.csv", "photos", "photos/**/*.png", "photos/**/*.gif", "photos/nomatch*.png", cwd=folder
  )
  assert proc.returncode == 1, proc.stderr[-3000:]  # the broken file, the pattern
  lines = proc.stdout.splitlines()
  scored = sorted(l.split("\t")[1] for l in lines if not l.startswith("FAILED"))
  assert scored == [
    "photos/a/b/astronaut_dark.png",
    "photos/a/b/camera_dark.png",
    "photos/a/coffee.gif",
    "photos/chelsea_dark.png",
  ], lines
  assert "FAILED\tphotos/broken.jpg\tcannot read image" in proc.stdout
  assert "FAILED\tphotos/nomatch*.png\tno file matches this pattern" in proc.stdout
  assert "2 of 6 file(s) could not be scored" in proc.stderr
  meta = json.loads((folder / "m.csv.meta.json").read_text())
  assert meta["model"]["name"] == shipped.NAME and meta["view"] == "auto"
  assert meta["score_range"] == [0.0, 1.0] and meta["lower_better"] is False
  rows = _rows(out)
  assert len(rows) == 6 and sum(bool(r["score"]) for r in rows) == 4

  # A NaN score is a failure, never done: it is scored again on resume.
  nan = next(r for r in rows if r["score"])
  nan["score"] = "nan"
  with open(out, "w", newline="") as f:
    w = csv.DictWriter(f, ["path", "score", "error"])
    w.writeheader()
    w.writerows(rows)
  proc = _score("--out=m.csv", "photos", cwd=folder)
  assert proc.returncode == 1, proc.stderr[-3000:]
  again = [l.split("\t")[1] for l in proc.stdout.splitlines()]
  assert sorted(again) == sorted([nan["path"], "photos/broken.jpg"])
  final = {r["path"]: r["score"] for r in _rows(out) if r["score"]}
  assert len(final) == 4 and final[nan["path"]] != "nan"

  # Another model on the same --out is refused, and the file kept as it is.
  before = out.read_text()
  proc = _score("--out=m.csv", f"--workdir={RELEASE_BMQA}", "photos", cwd=folder)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert (
    "error: --out=m.csv holds the scores of another run (model differ): shipped "
    f"model {shipped.NAME} (sha256 "
  ) in proc.stderr
  assert f"this run: workdir {RELEASE_BMQA} (st step 3)" in proc.stderr
  assert out.read_text() == before
  proc = _score(
    "--out=m.csv", f"--workdir={RELEASE_BMQA}", "--overwrite", "photos/chelsea_dark.png", cwd=folder
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((folder / "m.csv.meta.json").read_text())["model"] == dict(
    workdir=RELEASE_BMQA,
    stage="st",
    step=3,
    config_sha256=json.loads((folder / "m.csv.meta.json").read_text())["model"]["config_sha256"],
  )
  assert [r["path"] for r in _rows(out)] == ["photos/chelsea_dark.png"]


def test_an_unrelated_file_is_never_overwritten(folder):
  notes = folder / "notes.csv"
  notes.write_text("remember to buy milk\n")
  proc = _score("--out=notes.csv", "photos/chelsea_dark.png", cwd=folder)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert (
    "error: --out=notes.csv exists and was not written by bmqa-score (no "
    "notes.csv.meta.json beside it); name another file, or pass --overwrite to "
    "replace it"
  ) in proc.stderr
  assert notes.read_text() == "remember to buy milk\n"


IDENTITY = dict(
  model=dict(name=shipped.NAME, sha256="0" * 64),
  view="auto",
  text=None,
  score_range=[0.0, 1.0],
  lower_better=False,
)


def _log(path, identity=IDENTITY, overwrite=False):
  log = score_log.ResultLog(str(path), identity, overwrite)
  log.close()
  return log


def test_out_files_that_are_not_score_files(tmp_path):
  manifest = tmp_path / "manifest.csv"
  manifest.write_text("image,mos,scene\na.jpg,0.5,s1\n")
  obj = tmp_path / "scores.json"
  obj.write_text('{"a": 1}')
  for path in (manifest, obj):
    before = path.read_text()
    with pytest.raises(score_log.OutFileError, match="was not written by bmqa-score"):
      _log(path)
    assert path.read_text() == before
  (tmp_path / "scores.json.meta.json").write_text(json.dumps(IDENTITY))
  with pytest.raises(score_log.OutFileError, match="is not a bmqa-score JSON file"):
    _log(obj)
  assert _log(obj, overwrite=True).results == [] and json.loads(obj.read_text()) == []
  with pytest.raises(score_log.OutFileError, match="name a .csv or .json file"):
    _log(tmp_path / "scores.txt")


def test_another_text_or_view_is_refused(tmp_path):
  out = tmp_path / "s.json"
  log = score_log.ResultLog(str(out), IDENTITY)
  log.add(scoring.Result("a.png", 0.5))
  log.add(scoring.Result("b.png", float("nan")))  # as a damaged model would give
  log.close()
  with pytest.raises(score_log.OutFileError, match=r"\(text differ\).*text 'dim'"):
    _log(out, dict(IDENTITY, text="dim"))
  with pytest.raises(score_log.OutFileError, match=r"\(view differ\)"):
    _log(out, dict(IDENTITY, view="tiles"))
  assert _log(out).done == {"a.png"}  # the same run resumes; NaN is not done
