r"""Prints the training speed (steps/s, images/s) of each stage and the input pipeline's images/s.

  python launch/benchmark_train.py --config=configs/quickstart.py --steps=20

The train step is timed on one fixed batch already on the device (compile time
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
from bmqa_jax.bmqa import train
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.bmqa import model as bmqa_lib

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
  names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  data = datasets.load(cfg, workdir, ("train",), log=lambda *_: None)
  has_text = datasets.uses_text(cfg)
  model = bmqa_lib.from_config(cfg, data.tokenizer.vocab_size if has_text else None)
  records = data.records("train", cfg)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
  for name in names:
    stage = train.Stage(cfg, name, model, mesh, len(records), has_text)
    rep = sharding.replicated(mesh)
    variables = jax.jit(stage.init_variables, out_shardings=rep)(jax.random.key(0))
    state_shape = jax.eval_shape(stage.init_state, variables)
    state_sharding = jax.tree.map(lambda _: rep, state_shape)
    state = jax.jit(stage.init_state, out_shardings=state_sharding)(variables)
    step = stage.jit_train_step(state_sharding)
    loader = pipeline.train_loader(records, pipeline.from_config(cfg),
                                   cfg[name].batch_size, seed=0)
    batch = sharding.put_batch(train._model_inputs(next(iter(loader)), has_text), mesh)  # pylint: disable=protected-access
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
