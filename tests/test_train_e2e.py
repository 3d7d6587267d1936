"""End to end on tiny built-in data: PT → SS → ST, a killed run resumes, evaluation.

The training runs as a real `launch/train.py` process (tracing two steps,
--profile_steps), killed (SIGKILL) once stage ST has saved a checkpoint; the
same command then finishes the run without
repeating PT or SS.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/quickstart.py:tiny=True"


def _cmd(workdir, *flags):
  return [sys.executable, "launch/train.py", f"--config={CONFIG}", f"--workdir={workdir}", *flags]


def _steps(workdir, stage):
  d = os.path.join(workdir, "checkpoints", stage)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  env = dict(os.environ, BMQA_DATA_DIR=str(tmp_path_factory.mktemp("data")), JAX_PLATFORMS="cpu")
  log1 = open(os.path.join(workdir, "first.log"), "w")
  proc = subprocess.Popen(
    _cmd(workdir, "--profile_steps=2:3"), cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT
  )
  deadline = time.time() + 600
  while not _steps(workdir, "st") and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  log1.close()
  killed_at = _steps(workdir, "st")  # after the kill: a save may land meanwhile
  first = open(os.path.join(workdir, "first.log")).read()
  assert killed_at, "stage ST never saved a checkpoint:\n" + first[-3000:]
  before = {s: _steps(workdir, s) for s in ("pt", "ss")}
  mtimes = {s: os.path.getmtime(os.path.join(workdir, "checkpoints", s)) for s in ("pt", "ss")}
  second = subprocess.run(
    _cmd(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
  return dict(
    workdir=workdir,
    env=env,
    killed_at=killed_at,
    before=before,
    mtimes=mtimes,
    first=first,
    second=second.stdout + second.stderr,
  )


def test_stages_hand_over_weights(run):
  assert "[ss] starting from the weights of stage pt" in run["first"]
  assert "[st] starting from the weights of stage ss" in run["first"]


def test_resume_skips_finished_stages(run):
  out = run["second"]
  assert "[pt] complete, skipping" in out and "[ss] complete, skipping" in out
  assert f"[st] resumed at step {run['killed_at'][-1]}" in out
  for s in ("pt", "ss"):  # nothing of PT or SS was trained or written again
    assert _steps(run["workdir"], s) == run["before"][s]
    assert os.path.getmtime(os.path.join(run["workdir"], "checkpoints", s)) == run["mtimes"][s]
  assert _steps(run["workdir"], "st")[-1] == 20
  assert "[st] validation:" in out


def test_workdir_contents(run):
  w = run["workdir"]
  assert os.path.isfile(os.path.join(w, "tokenizer.model"))
  assert os.path.isfile(os.path.join(w, "config.json"))
  events = [f for _, _, fs in os.walk(os.path.join(w, "tensorboard")) for f in fs]
  assert any(f.startswith("events.out.tfevents") for f in events)
  # --profile_steps=2:3 of the first run: a trace of PT's steps 2 and 3
  traces = [f for _, _, fs in os.walk(os.path.join(w, "profile")) for f in fs]
  assert any(f.endswith(".xplane.pb") for f in traces), traces


def test_evaluate_writes_reports(run):
  proc = subprocess.run(
    [sys.executable, "launch/evaluate.py", f"--workdir={run['workdir']}"],
    cwd=ROOT,
    env=run["env"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "| overall" in proc.stdout
  ev = os.path.join(run["workdir"], "eval")
  m = json.load(open(os.path.join(ev, "metrics.json")))
  for k in ("plcc", "srcc", "krcc", "rmse", "n"):
    assert k in m["overall"]
  assert m["overall"]["n"] == 10 and len(m["per_device"]) == 5
  assert os.path.getsize(os.path.join(ev, "scatter.png")) > 1000
  assert "PLCC" in open(os.path.join(ev, "report.md")).read()


def test_score_files_reports_broken_ones(run, tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 60, (300, 500, 3), dtype=np.uint8)).save(tmp_path / "large.jpg")
  Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16)).save(tmp_path / "deep.png")
  (tmp_path / "broken.jpg").write_bytes((tmp_path / "large.jpg").read_bytes()[:300])
  out = tmp_path / "scores.json"
  proc = subprocess.run(
    [
      sys.executable,
      "launch/score.py",
      f"--workdir={run['workdir']}",
      "--text=a dim photo of a cat, noisy",
      "--view=tiles",
      "--tile_short_side=64",
      f"--out={out}",
      str(tmp_path),
    ],
    cwd=ROOT,
    env=run["env"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert proc.returncode == 1, proc.stderr[-3000:]  # one file failed
  res = {os.path.basename(r["path"]): r for r in json.load(open(out))}
  assert res["broken.jpg"]["score"] is None and "broken.jpg" in res["broken.jpg"]["error"]
  assert isinstance(res["large.jpg"]["score"], float)
  assert isinstance(res["deep.png"]["score"], float)
  assert "1 of 3 file(s) could not be scored" in proc.stderr
