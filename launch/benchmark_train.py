r"""Prints the training speed (steps/s, images/s) of each stage and the input pipeline's images/s.

  python launch/benchmark_train.py --config=configs/quickstart.py --steps=20

Each stage is planned as training plans it (`bmqa_jax.bmqa.stage`); its step
is timed on one fixed batch already on the device (compile time
excluded, reported apart); the input pipeline is timed alone, decoding and
augmenting the config's training split with the config's worker count and with
`--workers` for comparison. Numbers on a shared machine are noisy: compare
ratios measured in the same run.
"""

import tempfile
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from bmqa_jax import sharding
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.bmqa import train
from bmqa_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per stage.")
_BATCHES = flags.DEFINE_integer("batches", 20, "Timed input-pipeline batches.")
_WORKERS = flags.DEFINE_multi_integer("workers", [0, 2], "Grain worker counts to time.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  cfg = _CONFIG.value
  workdir = tempfile.mkdtemp(prefix="bmqa_bench_")
  mesh = sharding.make_mesh(cfg)
  names = stage_lib.stage_names(cfg)
  data = train.load_data(cfg, workdir, names, lambda *_: None, val=False)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
  for name in names:  # the plan training runs: model, optimiser, shardings
    plan = stage_lib.for_data(cfg, name, data, mesh)
    variables = jax.jit(plan.init_variables)(jax.random.key(0))
    state = jax.jit(plan.init_state, out_shardings=plan.state_sharding)(variables)
    step = plan.jit_train_step()
    records = data.records(plan.split, cfg)
    loader = pipeline.train_loader(records, pipeline.from_config(cfg),
                                   cfg[name].batch_size, seed=0)
    batch = sharding.put_batch(plan.model_inputs(next(iter(loader))), mesh)
    rng = jax.random.key(1)
    t = time.perf_counter()
    for _ in range(2):  # compile, then one call to settle every buffer
      state, m = step(state, batch, rng)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = step(state, batch, rng)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / _STEPS.value
    bs = cfg[name].batch_size
    print(f"stage {name:>3}: {1 / dt:7.2f} steps/s, {bs / dt:8.1f} images/s "
          f"(batch {bs}, first two steps incl. compile {compile_s:.1f} s)")
  records = data.records("train", cfg)
  bs = cfg[names[-1]].batch_size
  for w in _WORKERS.value:
    pcfg = pipeline.from_config(cfg)
    pcfg = pipeline.PipelineConfig(**{**pcfg.__dict__, "workers": w})
    it = iter(pipeline.train_loader(records, pcfg, bs, seed=0))
    next(it)  # start-up (worker processes) excluded
    t = time.perf_counter()
    for _ in range(_BATCHES.value):
      next(it)
    dt = time.perf_counter() - t
    print(f"input pipeline, {w} workers: {_BATCHES.value * bs / dt:8.1f} images/s")


if __name__ == "__main__":
  app.run(main)
