r"""Prints what each training stage of a config costs, on the plan training runs.

  python launch/benchmark_train.py --config=configs/quickstart.py --steps=20 [--json=F]

Per stage (`bmqa_jax.bmqa.benchmark`): the first step (compilation included),
steps/s and images/s on one batch already on the devices (the step's ceiling),
the same end to end with the real input pipeline, the pipeline alone, and peak
memory; --workers times the pipeline with other worker counts. Numbers on a
shared machine are noisy: compare ratios measured in the same run.
"""

import dataclasses
import json
import tempfile

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from bmqa_jax import runtime
from bmqa_jax import sharding
from bmqa_jax.bmqa import benchmark
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.bmqa import train
from bmqa_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
_WORKERS = flags.DEFINE_multi_integer("workers", [], "Also time the pipeline alone "
                                      "with these grain worker counts.")
_JSON = flags.DEFINE_string("json", None, "Write the figures here as JSON.")
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
    records = data.records(plan.split, cfg)
    rows.append(benchmark.stage_figures(plan, records, pcfg, workdir, _STEPS.value,
                                        log=lambda *_: None))
    r = rows[-1]
    print(f"stage {name:>3} (batch {r['batch']}): first step {r['first_step_s']:.1f} s | "
          f"ceiling {r['synthetic_images_per_s']:.1f} img/s | end to end "
          f"{r['e2e_images_per_s']:.1f} img/s ({100 * r['e2e_of_ceiling']:.0f} %) | "
          f"pipeline alone {r['pipeline_images_per_s']:.1f} img/s | peak host "
          f"{r['peak_host_mb']:.0f} MB", flush=True)
  for w in _WORKERS.value:
    wcfg = dataclasses.replace(pcfg, workers=w)
    plan = stage_lib.for_data(cfg, names[-1], data, mesh)
    it = iter(pipeline.train_loader(data.records(plan.split, cfg), wcfg,
                                    plan.scfg.batch_size, seed=0))
    next(it)  # start-up (worker processes) excluded
    s = benchmark.timed(lambda: next(it), _STEPS.value)
    rows.append(dict(stage=names[-1], workers=w, pipeline_images_per_s=plan.scfg.batch_size / s))
    print(f"input pipeline, {w} workers: {rows[-1]['pipeline_images_per_s']:.1f} img/s")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
