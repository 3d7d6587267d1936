"""What one training stage costs, measured on the plan training runs
(`bmqa_jax.bmqa.stage.make_stage`): `launch/benchmark_train.py` prints it.

For a stage: the first step's time (compilation included); steps/s on one
batch already on the devices (the step's ceiling: no input pipeline); steps/s
end to end with the real input pipeline feeding every step; the input
pipeline alone (images/s); and the peak memory (the host's resident set, and
the first device's peak when the backend reports it).
"""

from __future__ import annotations

import resource
import time

import jax

from bmqa_jax import sharding
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.data import pipeline


def _loader(plan: stage_lib.StagePlan, records, pcfg, workdir: str, seed: int, log):
  bs = plan.scfg.batch_size
  if not plan.uses_cache:
    return pipeline.train_loader(records, pcfg, bs, seed=seed), 0.0
  t = time.perf_counter()  # the frozen tower's features, as training builds them
  variables = jax.jit(plan.init_variables)(jax.random.key(0))
  cache = feature_cache.build(plan.model, variables, records, plan.cfg, pcfg, workdir,
                              plan.mesh, log)
  return feature_cache.train_loader(records, cache, pcfg, bs, seed), time.perf_counter() - t


def timed(fn, steps: int) -> float:
  """Seconds per call of `fn` over `steps` calls (waiting for the devices)."""
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def stage_figures(plan: stage_lib.StagePlan, records, pcfg, workdir: str,
                  steps: int = 10, seed: int = 0, log=print) -> dict:
  """The figures of one stage (see the module docstring); numbers in s, /s, MB."""
  bs, mesh = plan.scfg.batch_size, plan.mesh
  loader, cache_s = _loader(plan, records, pcfg, workdir, seed, log)
  it = iter(loader)
  variables = jax.jit(plan.init_variables)(jax.random.key(0))
  holder = {"state": jax.jit(plan.init_state, out_shardings=plan.state_sharding)(variables)}
  step, rng = plan.jit_train_step(), jax.random.key(1)
  fixed = sharding.put_batch(plan.model_inputs(next(it)), mesh)

  def run(batch):
    holder["state"], metrics = step(holder["state"], batch, rng)
    return metrics

  first = timed(lambda: run(fixed), 1)
  ceiling = timed(lambda: run(fixed), steps)
  e2e = timed(lambda: run(sharding.put_batch(plan.model_inputs(next(it)), mesh)), steps)
  alone = timed(lambda: next(it), steps)
  stats = jax.local_devices()[0].memory_stats() or {}
  return dict(
      stage=plan.name, batch=bs, feature_cache=plan.uses_cache,
      cache_build_s=round(cache_s, 2), first_step_s=round(first, 2),
      synthetic_steps_per_s=1 / ceiling, synthetic_images_per_s=bs / ceiling,
      e2e_steps_per_s=1 / e2e, e2e_images_per_s=bs / e2e,
      e2e_of_ceiling=ceiling / e2e, pipeline_images_per_s=bs / alone,
      peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      peak_device_mb=stats.get("peak_bytes_in_use", 0) / 2**20 or None)
