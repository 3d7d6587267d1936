r"""Kills training at random moments and checks that resuming gives the same weights.

  bmqa-check-resume --config=quickstart:tiny=True,modalities=image \
      --kills=20 --workdir=/tmp/resume_check

Trains once without interruption (WORKDIR/reference, T seconds); then starts
the same training in WORKDIR/killed and SIGKILLs it after a random time
(uniform in [--min_s, --max_s], default [0.15 T, 0.45 T]: start-up,
compilation, steps, checkpoint writes) --kills times, runs it to the end and
compares the final weights (0 expected: batches, keys are functions of the step).
"""

import os
import random
import signal
import subprocess
import time

from absl import flags
from absl import logging
import jax
import numpy as np

from bmqa_jax import cli
from bmqa_jax.train_lib import checkpoint

_CONFIG = flags.DEFINE_string("config", None, "Config (name or file[:args]) for bmqa-train.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where both runs go.")
_KILLS = flags.DEFINE_integer("kills", 20, "How many times to kill the run.")
_MIN_S = flags.DEFINE_float("min_s", 0, "Shortest time before a kill (0: 0.15 T).")
_MAX_S = flags.DEFINE_float("max_s", 0, "Longest time before a kill (0: 0.45 T).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the kill moments.")


def _train(workdir, extra, timeout=None):
  cmd = cli.command_line("train") + [f"--config={_CONFIG.value}", f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    return proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGKILL)
  return proc.wait()


def _latest(workdir):
  root = os.path.join(workdir, "checkpoints")
  return {
    s: checkpoint.latest_step(os.path.join(root, s))
    for s in (sorted(os.listdir(root)) if os.path.isdir(root) else [])
  }


def main(argv):
  logging.set_verbosity(logging.WARNING)
  extra = argv[1:]  # e.g. --config.st.epochs=2
  ref, killed = (os.path.join(_WORKDIR.value, n) for n in ("reference", "killed"))
  rng, t0 = random.Random(_SEED.value), time.time()
  assert _train(ref, extra) == 0, "the uninterrupted run failed"
  t_ref = time.time() - t0
  print(f"reference run: {t_ref:.0f} s, checkpoints {_latest(ref)}")
  lo, hi = _MIN_S.value or 0.15 * t_ref, _MAX_S.value or 0.45 * t_ref
  for k in range(_KILLS.value):
    wait = rng.uniform(lo, hi)
    rc = _train(killed, extra, timeout=wait)
    print(f"kill {k + 1:2d} after {wait:5.1f} s: rc {rc}, checkpoints {_latest(killed)}")
  assert _train(killed, extra) == 0, "the resumed run failed"
  diffs = []
  for stage in _latest(ref):
    a, _ = checkpoint.load_weights(os.path.join(ref, "checkpoints", stage))
    b, _ = checkpoint.load_weights(os.path.join(killed, "checkpoints", stage))
    d = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    diffs.append(max(jax.tree.leaves(d) or [0.0]))
    print(f"stage {stage}: largest weight difference {diffs[-1]:.3g}")
  print("RESULT", "identical" if max(diffs) == 0 else f"differ by {max(diffs):.3g}")
