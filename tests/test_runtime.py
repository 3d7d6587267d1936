"""Launch scripts keep XLA's compiled programs (bmqa_jax/runtime.py): a second
launch/score.py loads them instead of compiling again."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(ROOT, "..", "shared", "data", "biq2021_lowlight", "images")


def test_score_fills_and_reuses_the_compilation_cache(tmp_path):
  photo = sorted(glob.glob(os.path.join(PHOTO, "*.jpg")))[:1]
  if not photo:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    photo = [str(tmp_path / "dark.png")]
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 40).astype(
        np.uint8)).save(photo[0])
  cache = tmp_path / "xla"
  run = lambda: subprocess.run(
      [sys.executable, "launch/score.py", f"--compilation_cache={cache}"] + photo,
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(os.listdir(cache))
  assert entries  # the scoring program was written
  second = run()
  assert second.returncode == 0, second.stderr[-2000:]
  assert sorted(os.listdir(cache)) == entries  # read, not compiled and written again
  score = lambda out: out.stdout.strip().splitlines()[-1].split()[-1]
  assert score(first) == score(second)
