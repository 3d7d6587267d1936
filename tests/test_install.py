"""A user's install: `pip install .` (not editable, runtime dependencies only)
into a fresh virtualenv, then used from another folder: `bmqa-score`, the
Python scorer on a path and on an array (the same score), and `bmqa-train` on
the quickstart.

It downloads the runtime dependencies from the package index, so it runs only
when asked: `BMQA_TEST_INSTALL=1 python -m pytest tests/test_install.py`
(minutes; BMQA_TEST_INSTALL_QUICKSTART=full trains the full quickstart instead
of `tiny=True`).
"""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
  os.environ.get("BMQA_TEST_INSTALL") != "1", reason="set BMQA_TEST_INSTALL=1 (downloads packages)"
)

SCORE_IN_PYTHON = """\
import numpy as np
from PIL import Image
import bmqa_jax
metric = bmqa_jax.create_metric()
by_path = metric("photo.png")
by_array = metric(np.asarray(Image.open("photo.png").convert("RGB")))
assert (by_path == by_array).all(), (by_path, by_array)
print(bmqa_jax.__version__, bmqa_jax.__file__, repr(float(by_path[0])))
"""


def _run(cmd, cwd, timeout=3600, env=None):
  env = {
    k: v
    for k, v in (env or os.environ).items()
    if k not in ("PYTHONPATH", "JAX_COMPILATION_CACHE_DIR")
  }
  proc = subprocess.run(
    cmd,
    cwd=cwd,
    env=dict(env, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
  return proc


def test_fresh_virtualenv(tmp_path):
  venv, away = tmp_path / "venv", tmp_path / "elsewhere"
  away.mkdir()
  _run([sys.executable, "-m", "venv", str(venv)], cwd=away)
  pip = [str(venv / "bin" / "python"), "-m", "pip"]
  _run(pip + ["install", "-q", "--upgrade", "pip"], cwd=away)
  wheels = tmp_path / "wheel"
  _run(pip + ["wheel", "-q", "--no-deps", "-w", str(wheels), ROOT], cwd=away)
  (wheel,) = wheels.iterdir()
  tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
  assert tops == {
    "bmqa_jax",
    wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
  }, tops  # no top-level `configs`
  _run(pip + ["install", "-q", str(wheel)], cwd=away)
  env = dict(
    os.environ, BMQA_CACHE_DIR=str(tmp_path / "cache"), BMQA_DATA_DIR=str(tmp_path / "data")
  )

  from bmqa_jax.bmqa import shipped  # pylint: disable=g-import-not-at-top

  photo = shipped.reference_photos(str(tmp_path / "ref"))[0]
  os.replace(photo, away / "photo.png")
  bin_ = venv / "bin"
  score = _run([str(bin_ / "bmqa-score"), "photo.png"], cwd=away, env=env)
  assert score.stdout.endswith("\tphoto.png\n") and "shipped model" in score.stderr
  py = _run([str(bin_ / "python"), "-c", SCORE_IN_PYTHON], cwd=away, env=env)
  _, where, value = py.stdout.split()
  assert where.startswith(str(venv)), where  # the installed copy, not the clone
  assert f"{float(value):.4f}" == score.stdout.split("\t")[0]
  quick = (
    "quickstart"
    if os.environ.get("BMQA_TEST_INSTALL_QUICKSTART") == "full"
    else "quickstart:tiny=True"
  )
  _run([str(bin_ / "bmqa-train"), f"--config={quick}", "--workdir=runs/q"], cwd=away, env=env)
  ev = _run([str(bin_ / "bmqa-evaluate"), "--workdir=runs/q"], cwd=away, env=env)
  assert "SRCC" in ev.stdout
  bad = subprocess.run(
    [str(bin_ / "bmqa-train"), "--config=quickstar", "--workdir=x"],
    cwd=away,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert bad.returncode == 2 and "error: --config=quickstar: no packaged config" in bad.stderr
