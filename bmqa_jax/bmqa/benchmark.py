"""What one training stage costs, measured on the plan training runs
(`bmqa_jax.bmqa.stage.make_stage`): `bmqa-benchmark-train` prints it.

For a stage: the first step's time (compilation included); steps/s on one
batch already on the devices (the step's ceiling: no input pipeline); steps/s
end to end through `train_lib.loop.run` (what training runs: the real input
pipeline, prefetching, the finite checks, logging and checkpoint cadence),
optionally with a store's latency of `input_delay_ms` per batch (below); the input
pipeline alone (images/s); and the peak memory (the host's resident set, and
the first device's peak when the backend reports it).

`input_figures`: the image pipeline alone on the JPEG path and on the prepared
store (`bmqa_jax.data.prepared`), per grain worker count, as images/s and
images/s per core (workers=0 decodes in the main process: one core; n workers:
n cores), and the time to build the store. A loader's first batch (start-up)
is not timed; with workers, batches they buffered meanwhile are.

`input_delay_ms` models a slow disk or remote store: every record's read
sleeps `input_delay_ms / batch` ms (the batch's reads add up to the delay), in
the data source, where a real store's latency is. The pipeline's reads then
overlap it as they would a real store's (grain's read threads), and the loop's
prefetching overlaps what remains with the step. (Sleeping the whole delay in
the loop's one batch thread, as this benchmark did before, measures the
sleep plus the host's batch work in series, which no prefetch depth can hide.)
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import resource
import time
from typing import Sequence

import jax

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.data import prepared
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop


def _loader(plan: stage_lib.StagePlan, records, pcfg, workdir: str, seed: int, log):
  bs = plan.scfg.batch_size
  if not plan.uses_cache:
    return pipeline.train_loader(records, pcfg, bs, seed=seed), 0.0
  t = time.perf_counter()  # the frozen tower's features, as training builds them
  variables = jax.jit(plan.init_variables)(jax.random.key(0))
  cache = feature_cache.build(
    plan.model, variables, records, plan.cfg, pcfg, workdir, plan.mesh, log
  )
  return feature_cache.train_loader(records, cache, pcfg, bs, seed), time.perf_counter() - t


class _SlowStore(collections.abc.Sequence):
  """`records` whose every read sleeps `seconds` first (see the module docstring)."""

  def __init__(self, records: Sequence, seconds: float):
    self.records, self.seconds = records, seconds

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i):
    time.sleep(self.seconds)
    return self.records[i]


def timed(fn, steps: int) -> float:
  """Seconds per call of `fn` over `steps` calls (waiting for the devices)."""
  t = time.perf_counter()
  out = None
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def stage_figures(
  plan: stage_lib.StagePlan,
  records,
  pcfg,
  workdir: str,
  steps: int = 10,
  seed: int = 0,
  log=log_lib.info,
  input_delay_ms: float = 0,
  wait_each_step: bool = False,
) -> dict:
  """The figures of one stage (see the module docstring); numbers in s, /s, MB.

  End to end is `train_lib.loop.run` itself, as training runs it: the real
  input pipeline (with `input_delay_ms` of store latency per batch: the module
  docstring), `config.device_prefetch` batches ahead, the stage's logging and
  checkpoint cadence, the finite checks, TensorBoard and the final save.
  `wait_each_step` (a baseline) reads each step's `finite` flag back before
  the next batch is asked for, as the loop did before it kept the flags on
  the devices."""
  bs, mesh, scfg = plan.scfg.batch_size, plan.mesh, plan.scfg
  if input_delay_ms:
    records = _SlowStore(records, input_delay_ms / 1000 / bs)
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

  def batch_fn(_):
    return sharding.put_batch(plan.model_inputs(next(it)), mesh)

  def waiting_step(state, batch, rng):
    state, metrics = step(state, batch, rng)
    jax.device_get(metrics["finite"])
    return state, metrics

  mngr = checkpoint.manager(os.path.join(workdir, "benchmark", plan.name), scfg.keep_checkpoints)
  jax.block_until_ready(holder["state"])
  t = time.perf_counter()
  holder["state"], _ = loop.run(
    waiting_step if wait_each_step else step,
    holder["state"],
    batch_fn,
    rng,
    name=plan.name,
    total_steps=1 + 2 * steps,
    mngr=mngr,
    log_every=scfg.log_every_steps,
    checkpoint_every=scfg.checkpoint_every_steps,
    tensorboard_dir=loop.tensorboard_dir(os.path.join(workdir, "benchmark"), plan.name),
    log=lambda *_: None,
    progress=False,
    prefetch=plan.cfg.device_prefetch,
  )
  jax.block_until_ready(holder["state"])
  e2e = (time.perf_counter() - t) / steps
  alone = timed(lambda: next(it), steps)
  stats = jax.local_devices()[0].memory_stats() or {}
  return dict(
    stage=plan.name,
    batch=bs,
    feature_cache=plan.uses_cache,
    store="prepared" if "image_store" in records[0] else "jpeg",
    cache_build_s=round(cache_s, 2),
    first_step_s=round(first, 2),
    input_delay_ms=input_delay_ms,
    prefetch=plan.cfg.device_prefetch,
    wait_each_step=wait_each_step,
    synthetic_steps_per_s=1 / ceiling,
    synthetic_images_per_s=bs / ceiling,
    e2e_steps_per_s=1 / e2e,
    e2e_images_per_s=bs / e2e,
    e2e_of_ceiling=ceiling / e2e,
    pipeline_images_per_s=bs / alone,
    peak_host_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    peak_device_mb=stats.get("peak_bytes_in_use", 0) / 2**20 or None,
  )


def _pipeline_rate(records, pcfg, batch: int, workers: int, steps: int) -> dict:
  it = iter(
    pipeline.train_loader(records, dataclasses.replace(pcfg, workers=workers), batch, seed=0)
  )
  next(it)  # start-up (worker processes) excluded
  rate = batch / timed(lambda: next(it), steps)
  cores = max(1, workers)
  return dict(workers=workers, cores=cores, images_per_s=rate, images_per_s_per_core=rate / cores)


def input_figures(
  data: datasets.Data, split: str, cfg, batch: int, workers: Sequence[int], steps: int
) -> dict:
  """The image pipeline alone per store and worker count (see the module
  docstring); the prepared store is built first if it is not there yet.
  Caption pairs from TFDS come decoded (no store): {}."""
  if split == "pretrain" and data.coco is not None:
    return {}
  pcfg = dataclasses.replace(pipeline.from_config(cfg), store="prepared")
  path = prepared.store_path([s.image for s in data.splits[split]], pcfg, data.workdir)
  reused = os.path.exists(path)
  t = time.perf_counter()
  stores = {"prepared": data.records(split, cfg, store="prepared")}
  build_s = time.perf_counter() - t
  stores["jpeg"] = data.records(split, cfg, store="jpeg")
  rows = [
    dict(store=name, **_pipeline_rate(stores[name], pcfg, batch, w, steps))
    for name in ("jpeg", "prepared")
    for w in workers
  ]
  return dict(
    store_build_s=round(build_s, 2),
    store_reused=reused,
    store_gb=os.path.getsize(path) / 1e9,
    inputs=rows,
  )
