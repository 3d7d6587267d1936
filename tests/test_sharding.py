"""Scale: 6 and 8 fake CPU devices, a (data, model) mesh and gradient
accumulation train exactly like 1 device; bfloat16 compute keeps f32 weights.

The multi-device checks run in a child process because the device count is
fixed when JAX starts (XLA_FLAGS=--xla_force_host_platform_device_count=8).
They use plain SGD: after Adam's normalised update a gradient element near
zero whose reduction order differs can change sign (measured 1.2e-5 relative
after 2 steps), while an SGD update is linear in the gradient, so the
parameters themselves can be compared at 1e-5.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
BATCH = 24


def _config(stage_name, image_name="resnet_tiny"):
  """quickstart's tiny model; image-only for ST (one tower compiles faster)."""
  from bmqa_jax.configs import quickstart  # pylint: disable=g-import-not-at-top

  cfg = quickstart.get_config("tiny=True")
  # The sizes these tolerances were set on (the batch's texts are 48 tokens;
  # quickstart's own limit grew to 96 for the built-in descriptions).
  cfg.input.max_text_len = 64
  cfg.model.text.kwargs.max_len = 64
  cfg.model.image.name = image_name
  if stage_name == "st":
    cfg.model.modalities = ("image",)
  cfg[stage_name].update(
    batch_size=BATCH, warmup_epochs=0, optimizer="sgd", learning_rate=0.01, schedule="constant"
  )
  return cfg


def _batch():
  rng = np.random.default_rng(0)
  return {
    "image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
    "text_ids": rng.integers(3, 100, (BATCH, 48)).astype(np.int32),
    "text_mask": np.arange(48)[None] < rng.integers(6, 48, (BATCH, 1)),
    "mos": rng.uniform(size=BATCH).astype(np.float32),
  }


def _host_state(stage):
  """A train state drawn in numpy (compiling `init` costs more than the steps)."""
  shapes = jax.eval_shape(lambda k: stage.init_state(stage.init_variables(k)), jax.random.key(0))
  rng = np.random.default_rng(0)

  def fill(path, x):
    name = jax.tree_util.keystr(path)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return np.zeros(x.shape, x.dtype)
    if "'var'" in name or "'scale'" in name:
      return rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    if "log_temperature" in name:
      return np.full(x.shape, np.log(0.1), x.dtype)
    fan_in = np.prod(x.shape[:-1]) if len(x.shape) > 1 else 100.0
    return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _child(out_dir):
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from bmqa_jax import pytree, sharding  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import stage as stage_lib  # pylint: disable=g-import-not-at-top

  batch = _batch()
  out = {}

  def run(cfg, stage_name, host_state, devices, **mesh_kw):
    cfg.mesh.update(mesh_kw)
    mesh = sharding.make_mesh(cfg, jax.devices()[:devices])
    stage = stage_lib.make_stage(cfg, stage_name, mesh, 240, 120)
    shardings = stage.state_sharding
    state = jax.device_put(host_state, shardings)
    step = stage.jit_train_step()
    losses = []
    for _ in range(STEPS):
      b = batch if stage.has_text else {k: batch[k] for k in ("image", "mos")}
      state, m = step(state, sharding.put_batch(b, mesh), jax.random.key(1))
      losses.append(float(m["loss"]))
    split = [k for k, s in pytree.param_paths(shardings["params"]).items() if "model" in s.spec]
    weights = {
      f"{col}/{k}": np.asarray(v)
      for col in ("params", "batch_stats")
      for k, v in pytree.param_paths(jax.device_get(state[col])).items()
    }
    return weights, dict(losses=losses, split=split)

  # (image tower, stage, runs: (name, devices, mesh fields, grad_accum_steps)).
  # resnet_tiny: MSE and BatchNorm statistics over the sharded batch, InfoNCE
  # over the sharded batch, and parameters split over the model axis.
  # vit_tiny (no BatchNorm): MSE over 3 microbatches equals the full batch.
  plan = [
    (
      "resnet_tiny",
      "st",
      [
        ("1", 1, {}, 1),
        ("6", 6, {}, 1),
        ("8", 8, {}, 1),
        ("4x2", 8, dict(data=4, model=2, shard_min_size=256), 1),
      ],
    ),
    ("resnet_tiny", "ss", [("1", 1, {}, 1), ("8", 8, {}, 1)]),
    ("vit_tiny", "st", [("1", 1, {}, 1), ("8accum3", 8, {}, 3)]),
  ]
  for image_name, stage_name, runs in plan:
    cfg = _config(stage_name, image_name)
    init_mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    stage = stage_lib.make_stage(cfg, stage_name, init_mesh, 240, 120)
    host_state = _host_state(stage)
    for name, devices, mesh_kw, accum in runs:
      c = _config(stage_name, image_name)
      c[stage_name].grad_accum_steps = accum
      key = f"{image_name}/{stage_name}/{name}"
      weights, out[key] = run(c, stage_name, host_state, devices, **mesh_kw)
      np.savez(os.path.join(out_dir, key.replace("/", "_") + ".npz"), **weights)
      print(f"done {image_name}/{stage_name}/{name}", flush=True)
  mesh8 = Mesh(np.asarray(jax.devices()).reshape(8, 1), ("data", "model"))
  for key, args in (("refused", (20, mesh8, "x")), ("refused_accum", (24, mesh8, "x", 2))):
    try:
      sharding.check_batch(*args)
      out[key] = ""
    except ValueError as e:
      out[key] = str(e)
  print("RESULT" + json.dumps(out))


@pytest.fixture(scope="module")
def result(tmp_path_factory):
  out_dir = str(tmp_path_factory.mktemp("sharding"))
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
    if isinstance(run, dict):
      with np.load(os.path.join(out_dir, key.replace("/", "_") + ".npz")) as f:
        run["weights"] = dict(f)
  return res


def _assert_same(many, one, rel=1e-5):
  """Every parameter and BatchNorm statistic within `rel` of the 1-device run
  (‖a − b‖ / max(‖b‖, 1) per array: the floor compares a parameter whose
  gradient is zero in exact arithmetic, like an attention key bias, absolutely),
  the same losses, and the weights did move."""
  assert set(many["weights"]) == set(one["weights"])
  for k, b in one["weights"].items():
    err = np.linalg.norm(many["weights"][k] - b) / max(np.linalg.norm(b), 1.0)
    assert err <= rel, f"{k}: relative difference {err:.2e}"
  np.testing.assert_allclose(many["losses"], one["losses"], rtol=1e-5)
  assert len(set(one["losses"])) == STEPS  # every step changed the weights


@pytest.mark.parametrize("run", ["resnet_tiny/st/6", "resnet_tiny/st/8", "resnet_tiny/ss/8"])
def test_data_parallel_same_parameters(result, run):
  _assert_same(result[run], result[run.rsplit("/", 1)[0] + "/1"])


def test_model_axis_same_parameters(result):
  """data=4 × model=2: large parameters (and their SGD state) split over 'model'."""
  run = result["resnet_tiny/st/4x2"]
  assert len(run["split"]) >= 5, run["split"]  # the mesh really splits parameters
  _assert_same(run, result["resnet_tiny/st/1"])


def test_gradient_accumulation_same_parameters(result):
  """3 microbatches of 8 on 8 devices = one batch of 24 (MSE, no BatchNorm)."""
  _assert_same(result["vit_tiny/st/8accum3"], result["vit_tiny/st/1"])


def test_indivisible_batch_is_refused(result):
  assert "global batch 20 is not divisible by the 8 devices" in result["refused"]
  assert "does not split into 2 microbatches" in result["refused_accum"]


def test_mesh_shapes_and_leaf_specs():
  from bmqa_jax import sharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top

  assert sharding.leaf_spec((3, 3, 64, 128), 2, 1000) == P(None, None, None, "model")
  assert sharding.leaf_spec((512, 64), 2, 1000) == P("model", None)
  assert sharding.leaf_spec((7, 9), 2, 10) == P()  # nothing divisible
  assert sharding.leaf_spec((64,), 2, 1000) == P()  # too small
  assert sharding.leaf_spec((), 2, 0) == P()
  cfg = _config("st")
  cfg.mesh.update(data=-1, model=1)
  assert dict(sharding.make_mesh(cfg).shape) == {"data": jax.device_count(), "model": 1}
  cfg.mesh.update(data=3, model=1)
  with pytest.raises(ValueError, match="is not the 1 devices"):
    sharding.make_mesh(cfg)


def test_slurm_one_task_per_host_owns_all_gpus():
  from bmqa_jax import sharding  # pylint: disable=g-import-not-at-top

  job = {"SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "6"}
  assert sharding.slurm_local_device_ids(dict(job, SLURM_STEP_TASKS_PER_NODE="1(x2)")) == list(
    range(6)
  )
  # One task per GPU: JAX's own default (the GPU of the local task id).
  assert sharding.slurm_local_device_ids(dict(job, SLURM_STEP_TASKS_PER_NODE="6(x2)")) is None
  assert sharding.slurm_local_device_ids({}) is None


def test_bfloat16_compute_keeps_float32_weights():
  """config.model.dtype='bfloat16': matmuls in bf16, parameters and updates f32.

  Traced only (`jax.eval_shape`, `jax.make_jaxpr`): nothing is compiled.
  """
  from bmqa_jax import sharding  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import stage as stage_lib  # pylint: disable=g-import-not-at-top

  cfg = _config("st")
  cfg.model.dtype = "bfloat16"
  stage = stage_lib.make_stage(cfg, "st", sharding.make_mesh(cfg), 240, 120)
  state = jax.eval_shape(lambda k: stage.init_state(stage.init_variables(k)), jax.random.key(0))
  batch = {k: jnp.asarray(v) for k, v in _batch().items() if k in ("image", "mos")}
  jaxpr, (new, metrics) = jax.make_jaxpr(stage.train_step, return_shape=True)(
    state, batch, jax.random.key(1)
  )
  for tree in (state["params"], new["params"], new["batch_stats"]):
    dtypes = {x.dtype for x in jax.tree.leaves(tree)}
    assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
  assert metrics["loss"].dtype == jnp.float32
  jaxpr = str(jaxpr)
  assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr


if __name__ == "__main__":
  _child(sys.argv[1])
