"""The commands end a user's mistake with one `error: …` line and a hint on
stderr, exit status 2, no traceback (`--verbose` adds it), and a failed data
check leaves nothing in the workdir.

Each mistake runs the real command (`launch/*.py`, or `bmqa_jax.cli` as the
installed `bmqa-*` commands run it) in a fresh process, as a user types it.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "tests", "data", "release_0_1")
QUICK = ["--config=quickstart:tiny=True,modalities=image"]


def _run(args, cwd=ROOT, timeout=600):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
  )
  return subprocess.run(
    [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )


def _error(proc) -> str:
  """The one `error:` line of a command that stopped on a mistake."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert any(l.startswith("hint: ") for l in proc.stderr.splitlines()), proc.stderr
  return errors[0]


def _manifest(tmp_path, bad_mos: str = "") -> str:
  """The release fixture's 16 photos as a manifest; `bad_mos` replaces row 3's MOS."""
  with open(os.path.join(RELEASE, "images", "manifest.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    r["image"] = os.path.join(RELEASE, "images", r["image"])
  if bad_mos:
    rows[2]["mos"] = bad_mos
  path = str(tmp_path / "manifest.csv")
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return path


@pytest.mark.parametrize(
  "args,want",
  [
    (
      ["--config=quickstart:tiny=True", "--config.st.learnig_rate=1"],
      "error: --config.st.learnig_rate: config.st has no field 'learnig_rate'; did you "
      "mean 'learning_rate'?",
    ),
    (
      ["--config=quickstar"],
      "error: --config=quickstar: no packaged config "
      "'quickstar' (did you mean 'quickstart'?); the names are ablation, asr, biq2021, "
      "captioner, dark4k, mliq, quickstart, or give a file (path/to/config.py)",
    ),
    (
      ["--config=configs/nope.py"],
      "error: --config=configs/nope.py: no config file "
      f"'configs/nope.py' (in {ROOT}); the packaged configs go by name: ablation, asr, "
      "biq2021, captioner, dark4k, mliq, quickstart",
    ),
    (
      ["--config=quickstart:tiyn=True"],
      "error: --config=quickstart:tiyn=True: unknown "
      "config argument 'tiyn' (known keys: img, init, modalities, tiny)",
    ),
    (
      QUICK + ["--workdri=runs/x"],
      "error: Unknown command line flag 'workdri'. Did you mean: workdir ?",
    ),
  ],
)
def test_config_and_flag_mistakes(tmp_path, args, want):
  workdir = tmp_path / "w"
  proc = _run(["launch/train.py", f"--workdir={workdir}"] + args)
  assert _error(proc) == want
  assert not workdir.exists()


def test_verbose_shows_the_traceback(tmp_path):
  proc = _run(["launch/train.py", "--config=quickstar", f"--workdir={tmp_path}/w", "--verbose"])
  assert proc.returncode == 2 and "Traceback" in proc.stderr
  assert "error: --config=quickstar: no packaged config" in proc.stderr


def test_a_workdir_that_is_a_file(tmp_path):
  (tmp_path / "w").write_text("not a folder")
  proc = _run(["launch/train.py", f"--workdir={tmp_path}/w"] + QUICK)
  assert _error(proc) == (
    f"error: --workdir={tmp_path}/w is a file; a workdir is a "
    "folder (a new one, or one that a run made)"
  )


def test_a_bad_manifest_writes_nothing_to_the_workdir(tmp_path):
  """The data are checked before the workdir is touched: before, a config.json
  was left behind, and the corrected config was then refused as a change."""
  manifest = _manifest(tmp_path, bad_mos="1.5")
  workdir = tmp_path / "w"
  args = [
    "-c",
    "from bmqa_jax import cli; cli.train()",
    f"--workdir={workdir}",
    "--config=quickstart:tiny=True,modalities=image",
    "--config.data.kind=manifest",
    f"--config.data.manifest={manifest}",
  ]
  err = _error(_run(args, cwd=tmp_path))  # the installed command's route
  assert err.startswith(f"error: {manifest}") and "1.5" in err, err
  assert not workdir.exists() or not os.listdir(workdir)


def test_a_changed_config_is_one_line(tmp_path):
  """A workdir of an earlier run, continued with another learning rate."""
  workdir = tmp_path / "bmqa"
  shutil.copytree(os.path.join(RELEASE, "bmqa"), workdir)
  stored = json.loads((workdir / "config.json").read_text())
  stored["data"]["manifest"] = _manifest(tmp_path)
  (workdir / "config.json").write_text(json.dumps(stored))
  (tmp_path / "stored.py").write_text(
    "import json\nimport ml_collections\n\ndef get_config():\n"
    f"  return ml_collections.ConfigDict(json.load(open({str(workdir / 'config.json')!r})))\n"
  )
  proc = _run(
    [
      "launch/train.py",
      f"--config={tmp_path}/stored.py",
      f"--workdir={workdir}",
      "--config.st.learning_rate=0.5",
    ]
  )
  err = _error(proc)
  assert err.startswith(
    f"error: '{workdir}' was trained with another config; changed: st.learning_rate: "
  ), err
  assert "hint: use a new --workdir, or --config_change=allow" in proc.stderr


def test_evaluate_and_score_mistakes(tmp_path):
  err = _error(_run(["launch/evaluate.py", f"--workdir={tmp_path}/none"]))
  assert f"{tmp_path}/none" in err, err
  (tmp_path / "out").mkdir()
  photo = os.path.join(RELEASE, "images", "0.png")
  err = _error(_run(["launch/score.py", f"--out={tmp_path}/out", photo]))
  assert err == f"error: --out={tmp_path}/out is a folder; name a .csv or .json file"
  err = _error(_run(["launch/score.py", f"--workdir={tmp_path}/none", photo]))
  assert err == (
    f"error: workdir '{tmp_path}/none' is not a folder (a training "
    "workdir holds config.json and checkpoints/)"
  )
