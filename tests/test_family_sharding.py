"""The recogniser and the captioner on 8 fake CPU devices train exactly like 1
device, through the same mesh code as BMQA (tests/test_sharding.py):
`sharding.make_mesh`, `state_sharding`, `put_batch` and `jit_step`.

Plain SGD, as in tests/test_sharding.py (an SGD update is linear in the
gradient, so the parameters can be compared at 1e-5). BatchNorm statistics of
the recogniser are computed over the whole sharded batch.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 3, 8


def _sgd(o):
  o.update(
    optimizer="sgd",
    schedule="constant",
    learning_rate=0.05,
    warmup_steps=0,
    momentum=0.0,
    grad_clip_norm=0.0,
  )


def _families():
  """(name, model, tx, init_fn, step_fn, batch) of the recogniser and the captioner."""
  import jax  # pylint: disable=g-import-not-at-top
  from bmqa_jax.configs import asr, captioner  # pylint: disable=g-import-not-at-top
  from bmqa_jax.captioner import model as cap_model  # pylint: disable=g-import-not-at-top
  from bmqa_jax.captioner import train as cap_train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.speech import model as asr_model  # pylint: disable=g-import-not-at-top
  from bmqa_jax.speech import train as asr_train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.train_lib import optim, state as state_lib  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  out = []
  c = asr.get_config("runlocal=True")
  c.model.update(conv_features=(4, 4), rnn_hidden=16, rnn_layers=1, dropout_rate=0.0)
  c.features.n_mels, c.frame_buckets = 16, (256,)
  _sgd(c.optimizer)
  m = asr_model.from_config(c)
  tx = optim.make_optimizer(c.optimizer, optim.make_schedule(c.optimizer, 10, 0))
  init = lambda k, m=m, c=c, tx=tx: state_lib.create(
    *(lambda v: (v["params"], v["batch_stats"]))(asr_model.init_variables(m, c, k)), tx
  )
  batch = dict(
    features=rng.standard_normal((BATCH, 256, 16)).astype(np.float32),
    lengths=rng.integers(150, 257, BATCH).astype(np.int32),
    labels=rng.integers(1, 29, (BATCH, 16)).astype(np.int32),
    label_lengths=rng.integers(4, 17, BATCH).astype(np.int32),
    weights=np.ones(BATCH, np.float32),
  )
  out.append(("asr", init, asr_train.make_train_step(m, tx), batch, c))
  c = captioner.get_config("runlocal=True")
  c.model.update(
    encoder="resnet_tiny", embed_dim=8, hidden_dim=16, attention_dim=8, dropout_rate=0.0
  )
  c.input.image_size = 32
  c.vocab.max_len = 8
  _sgd(c.optimizer)
  m = cap_model.from_config(c, 20)
  tx = optim.make_optimizer(c.optimizer, optim.make_schedule(c.optimizer, 10, 0))
  init = lambda k, m=m, c=c, tx=tx: state_lib.create(
    *(lambda v: (v["params"], v.get("batch_stats", {})))(cap_model.init_variables(m, c, k)), tx
  )
  batch = dict(
    image=rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32),
    caption=rng.integers(1, 20, (BATCH, 10)).astype(np.int32),
  )
  out.append(("captioner", init, cap_train.make_train_step(m, tx, 1.0), batch, c))
  return out, jax


def _child(out_dir):
  from bmqa_jax import pytree, sharding  # pylint: disable=g-import-not-at-top

  families, jax = _families()
  res = {}
  for name, init, step_fn, batch, cfg in families:
    host = jax.device_get(jax.jit(init)(jax.random.key(0)))
    for n in (1, 8):
      mesh = sharding.make_mesh(cfg, jax.devices()[:n])
      shard = sharding.state_sharding(host, mesh, sharding.min_shard_size(cfg))
      state = jax.device_put(host, shard)
      step = sharding.jit_step(step_fn, shard, mesh)
      losses = []
      for _ in range(STEPS):
        state, m = step(state, sharding.put_batch(batch, mesh), jax.random.key(1))
        losses.append(float(m["loss"]))
      weights = {
        f"{col}/{k}": np.asarray(v)
        for col in ("params", "batch_stats")
        for k, v in pytree.param_paths(jax.device_get(state[col])).items()
      }
      np.savez(os.path.join(out_dir, f"{name}_{n}.npz"), **weights)
      res[f"{name}/{n}"] = dict(
        losses=losses,
        devices=len(state["params"] and jax.tree.leaves(state["params"])[0].sharding.device_set),
      )
  print("RESULT" + json.dumps(res))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("family_sharding"))
  env = dict(
    os.environ,
    XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
    JAX_PLATFORMS="cpu",
  )
  proc = subprocess.run(
    [sys.executable, __file__, out_dir],
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
  res = json.loads(line[len("RESULT") :])
  for key, run in res.items():
    with np.load(os.path.join(out_dir, key.replace("/", "_") + ".npz")) as f:
      run["weights"] = dict(f)
  return res


@pytest.mark.parametrize("family", ["asr", "captioner"])
def test_eight_devices_train_like_one(result, family):
  one, many = result[f"{family}/1"], result[f"{family}/8"]
  assert one["devices"] == 1 and many["devices"] == 8
  assert set(many["weights"]) == set(one["weights"])
  for k, b in one["weights"].items():
    err = np.linalg.norm(many["weights"][k] - b) / max(np.linalg.norm(b), 1.0)
    # Adam steps on gradients all-reduced in another order: float32 rounding,
    # amplified a little through the recurrence (the GRU's biases: up to 1.5e-5).
    assert err <= 5e-5, f"{family} {k}: relative difference {err:.2e}"
  # CTC losses near 100 summed in another order: float32 rounding only.
  np.testing.assert_allclose(many["losses"], one["losses"], rtol=5e-5)
  assert len(set(one["losses"])) == STEPS  # every step changed the weights


if __name__ == "__main__":
  _child(sys.argv[1])
