r"""Prints what each training stage of a config costs, on the plan training runs.

  bmqa-benchmark-train --config=quickstart --steps=20 [--input_delay_ms=D] \
      [--workers=0 --workers=2] [--json=F]
  python launch/benchmark_train.py --config=configs/quickstart.py --steps=20

Per stage (`bmqa_jax.bmqa.benchmark`): the first step (compilation included),
steps/s and images/s on one batch already on the devices (the step's ceiling),
the same end to end through the training loop itself (train_lib.loop.run: the
real input pipeline, prefetching, logging and checkpoint cadence, finite
checks), with --input_delay_ms of latency per batch, spread over its records'
reads (a slow disk or remote store), the pipeline alone, and peak memory; then the image pipeline
alone on the JPEG path and on the prepared store
for each --workers count (images/s and per core), next to what the step
consumes, and the time to build the store. Numbers on a shared machine are
noisy: compare ratios measured in the same run.
"""

import json
import tempfile

from absl import flags
import jax

from bmqa_jax import runtime
from bmqa_jax import sharding
from bmqa_jax.bmqa import benchmark
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.bmqa import train
from bmqa_jax.cli import config_flag
from bmqa_jax.data import pipeline

_CONFIG = config_flag.DEFINE_config(
  "config", None, "Experiment config: a name (quickstart) or a file, with :key=value args."
)
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_WORKERS = flags.DEFINE_multi_integer(
  "workers", [], "Grain worker counts to time the pipeline alone with (default: the config's)."
)
_JSON = flags.DEFINE_string("json", None, "Write the figures here as JSON.")
_DELAY = flags.DEFINE_float(
  "input_delay_ms",
  0.0,
  "Latency of a slow disk or remote "
  "store per batch of the end-to-end run: each record's read "
  "sleeps this / batch ms.",
)
_WAIT = flags.DEFINE_bool(
  "wait_each_step",
  False,
  "A baseline: end to end reads "
  "each step's finite flag back before asking for the next "
  "batch (the loop before issue 26; with --config.device_prefetch=0 "
  "batches are also fetched when the step needs them).",
)
runtime.define_flags(cluster=False)
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  runtime.start()
  cfg, workdir = _CONFIG.value, tempfile.mkdtemp(prefix="bmqa_bench_")
  mesh, names = sharding.make_mesh(cfg), stage_lib.stage_names(cfg)
  data = train.load_data(cfg, workdir, names, lambda *_: None, val=False)
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}")
  rows, pcfg = [], pipeline.from_config(cfg)
  for name in names:
    plan = stage_lib.for_data(cfg, name, data, mesh)
    inputs = benchmark.input_figures(
      data, plan.split, cfg, plan.scfg.batch_size, _WORKERS.value or [pcfg.workers], _STEPS.value
    )
    records = data.records(plan.split, cfg)
    rows.append(
      dict(
        benchmark.stage_figures(
          plan,
          records,
          pcfg,
          workdir,
          _STEPS.value,
          log=lambda *_: None,
          input_delay_ms=_DELAY.value,
          wait_each_step=_WAIT.value,
        ),
        **inputs,
      )
    )
    r = rows[-1]
    print(
      f"stage {name:>3} (batch {r['batch']}): first step {r['first_step_s']:.1f} s | "
      f"ceiling {r['synthetic_images_per_s']:.1f} img/s | end to end "
      f"{r['e2e_images_per_s']:.1f} img/s ({100 * r['e2e_of_ceiling']:.0f} %, "
      f"input delay {r['input_delay_ms']:g} ms) | "
      f"pipeline alone ({r['store']}) {r['pipeline_images_per_s']:.1f} img/s | "
      f"peak host {r['peak_host_mb']:.0f} MB",
      flush=True,
    )
    if inputs:
      print(
        f"  prepared store: {r['store_gb']:.2f} GB, "
        f"{'reused' if r['store_reused'] else 'built'} in {r['store_build_s']:.1f} s; "
        f"the step consumes {r['synthetic_images_per_s']:.1f} img/s"
      )
    for i in r.get("inputs", []):
      print(
        f"  {i['store']:>8}, {i['workers']} workers: {i['images_per_s']:7.1f} img/s, "
        f"{i['images_per_s_per_core']:7.1f} img/s per core",
        flush=True,
      )
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=1)
