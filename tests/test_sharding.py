"""Data parallelism: 8 (and 6) fake CPU devices train exactly like 1 device.

The check runs in a child process because the device count is fixed when JAX
starts (XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child():
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from bmqa_jax import sharding, train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.models import bmqa  # pylint: disable=g-import-not-at-top

  cfg = quickstart.get_config("tiny=True")
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(24, 32, 32, 3)).astype(np.float32),
           "text_ids": rng.integers(3, 100, (24, 48)).astype(np.int32),
           "text_mask": np.arange(48)[None] < rng.integers(6, 48, (24, 1)),
           "mos": rng.uniform(size=24).astype(np.float32)}
  out = {}
  # (stage, device counts): InfoNCE over the sharded batch and MSE with
  # BatchNorm statistics over the sharded batch. One compile per entry.
  for stage_name, counts in (("ss", (1, 8)), ("st", (1, 6, 8))):
    cfg[stage_name].batch_size = 24
    cfg[stage_name].warmup_epochs = 0  # every step updates the weights
    model = bmqa.from_config(cfg, 120)
    init_mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    stage = train.Stage(cfg, stage_name, model, init_mesh, 240, True)
    host_state = jax.device_get(jax.jit(
        lambda k, st=stage: st.init_state(st.init_variables(k)))(jax.random.key(0)))
    print(f"initialised {stage_name}", flush=True)
    for n in counts:
      mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
      stage = train.Stage(cfg, stage_name, model, mesh, 240, True)
      stage.setup_optimizer(host_state["params"])
      rep = sharding.replicated(mesh)
      ss = jax.tree.map(lambda _: rep, host_state)
      state = jax.device_put(host_state, ss)
      step = stage.jit_train_step(ss)
      losses = []
      for _ in range(3):
        state, m = step(state, sharding.put_batch(batch, mesh), jax.random.key(1))
        losses.append(float(m["loss"]))
      print(f"done {stage_name}/{n}", flush=True)
      out[f"{stage_name}/{n}"] = {"losses": losses}
  try:
    sharding.check_batch(20, Mesh(np.asarray(jax.devices()[:8]), ("data",)), "x")
    out["refused"] = ""
  except ValueError as e:
    out["refused"] = str(e)
  print("RESULT" + json.dumps(out))


@pytest.fixture(scope="module")
def result():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True,
                        text=True, timeout=900, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
  return json.loads(line[len("RESULT"):])


@pytest.mark.parametrize("stage,devices", [("ss", 8), ("st", 6), ("st", 8)])
def test_same_losses_and_parameters(result, stage, devices):
  """Losses of 3 consecutive steps (so 2 updates) agree to 1e-5 relative.

  The parameters are not compared at 1e-5: after Adam's normalised update a
  gradient element near zero whose reduction order differs can change sign
  (measured: 1.2e-5 relative after 2 SS steps), so that bound belongs to a
  test with a plain SGD step (issue 4).
  """
  one, many = result[f"{stage}/1"], result[f"{stage}/{devices}"]
  np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5)
  assert len(set(one["losses"])) == 3  # every step changed the weights


def test_indivisible_batch_is_refused(result):
  assert "global batch 20 is not divisible by the 8 devices" in result["refused"]


if __name__ == "__main__":
  _child()
