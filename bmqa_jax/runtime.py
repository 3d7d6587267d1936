"""What every launch script does before its first JAX computation.

`define_flags()` adds the absl flags; `start()` then

* chooses XLA:CPU's kernel libraries and scheduler (`--cpu_kernels`,
  `tune_cpu`): YNNPACK for matrix products and reductions but not
  convolutions, and kernels one after another rather than side by side on the
  same cores (what each buys: docs/performance.md);
* with `cluster=True` flags, starts the cluster (`sharding.initialize_distributed`):
  `--multihost` (SLURM or Cloud TPU variables) or `--coordinator=HOST:PORT
  --num_processes=N --process_id=I` (any scheduler);
* turns on XLA's persistent compilation cache (`--compilation_cache`, default
  `default_cache_dir()`; '' turns it off): a second
  `launch/score.py`, or a resumed training run, loads its compiled programs
  instead of compiling them again. Not for several processes on CPUs
  (`cache_safe`): there it made every warm-cache run wait forever;
* with `cluster=True` flags, takes SIGTERM and SIGINT (`bmqa_jax.stop`): a
  checkpoint at the next step, then exit (`--stop_grace_s` at the latest).
"""

from __future__ import annotations

import os

import jax

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax import stop


def cache_root() -> str:
  """$BMQA_CACHE_DIR, else ~/.cache/bmqa_jax: where compiled programs are kept."""
  return os.environ.get(
    "BMQA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "bmqa_jax")
  )


def default_cache_dir() -> str:
  """JAX's own JAX_COMPILATION_CACHE_DIR when set, else $BMQA_CACHE_DIR/xla or
  ~/.cache/bmqa_jax/xla."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  return os.path.join(cache_root(), "xla")


def cache_safe() -> str | None:
  """None where the persistent compilation cache may be used, else why not.

  Several processes on CPUs (jaxlib 0.10): a CPU program loaded from the cache
  has another fingerprint than the same program compiled, and JAX numbers each
  launch of a program from its fingerprint (`GetBaseLaunchId` in jaxlib's
  py_executable.cc); XLA's CPU collectives meet only launches of the same
  number. On CPUs each process's cache key holds its own devices and only
  process 0 writes, so in a warm run process 0 loads the train step while the
  others compile it, and the first all-reduce waits forever
  (tests/test_multiprocess.py: its second and third 2 x 2 launches of a
  workdir start with the cache the first one warmed, and hung before).
  """
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    return (
      "several processes on CPUs: a program loaded from the cache gets "
      "another launch id than the same program compiled by the other "
      "processes, and their collectives would never meet"
    )
  return None


def enable_compilation_cache(path: str | None = None, log=log_lib.info) -> str:
  """XLA's persistent cache in `path` (None: `default_cache_dir()`); returns it
  ('' when off, or when `cache_safe()` says it must be). Programs that compile
  in under 0.5 s are not worth a file and are left out. Call it after the
  cluster is started: `cache_safe` asks how many processes there are."""
  path = default_cache_dir() if path is None else path
  if path and (why := cache_safe()):
    log(f"compilation cache off: {why}")
    return ""
  if path:
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


# XLA:CPU settings of `tune_cpu`, flag -> value (measured with
# launch/benchmark.py and launch/benchmark_train.py, docs/performance.md):
# * YNNPACK for matrix products and reductions only (jaxlib 0.10's default
#   routes convolutions to YNNPACK as well, where they run slower);
# * XLA's plain thunk scheduler: the concurrency-optimised one runs independent
#   kernels side by side on the same cores, and each then runs slower.
CPU_FLAGS = {
  "--xla_cpu_experimental_ynn_fusion_type": "individual_dot,reduce",
  "--xla_cpu_enable_concurrency_optimized_scheduler": "false",
}


def cpu_flags(current: str = "") -> list[str]:
  """The `CPU_FLAGS` entries (``flag=value``) that `current` does not set."""
  return [f"{flag}={value}" for flag, value in CPU_FLAGS.items() if flag + "=" not in current]


def tune_cpu() -> bool:
  """Adds `CPU_FLAGS` to XLA_FLAGS; True when it added any.

  A flag that XLA_FLAGS already sets is left alone (the user's choice wins).
  XLA reads XLA_FLAGS once, when JAX runs its first computation: call this
  before (`start()` is each launch script's first call); later, the flags
  change nothing.
  """
  current = os.environ.get("XLA_FLAGS", "")
  missing = cpu_flags(current)
  if missing:
    os.environ["XLA_FLAGS"] = " ".join([current] + missing).strip()
  return bool(missing)


def define_flags(cluster: bool = True) -> None:
  """The flags `start()` reads."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_bool(
    "cpu_kernels",
    True,
    "XLA:CPU: YNNPACK for matrix products and "
    "reductions, no YNNPACK convolutions, the plain thunk scheduler "
    "(runtime.tune_cpu); --nocpu_kernels keeps XLA's defaults.",
  )
  flags.DEFINE_string(
    "compilation_cache",
    None,
    "XLA compilation cache folder (default $BMQA_CACHE_DIR/xla or ~/.cache/bmqa_jax/xla; '': off).",
  )
  if not cluster:
    return
  flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() with the cluster read from SLURM or Cloud TPU variables.",
  )
  flags.DEFINE_string(
    "coordinator",
    None,
    "HOST:PORT of process 0 (with --num_processes and --process_id): a cluster of any scheduler.",
  )
  flags.DEFINE_integer("num_processes", None, "Processes of the job (--coordinator).")
  flags.DEFINE_integer("process_id", None, "This process's index (--coordinator).")
  flags.DEFINE_float(
    "stop_grace_s",
    60.0,
    "SIGTERM/SIGINT save a checkpoint at the "
    "next step and stop (bmqa_jax.stop); a process exits at the latest "
    "this many seconds after the signal, with or without one.",
  )


def start(log=log_lib.info) -> None:
  """The CPU kernels, the cluster when the flags ask for one, the
  compilation cache (whose use depends on the cluster), then, for commands
  with cluster flags, the stop signals (`bmqa_jax.stop`: after the cluster,
  whose start takes SIGTERM for JAX's preemption notifier)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  f = flags.FLAGS
  if f.cpu_kernels:
    tune_cpu()
  if "coordinator" in f and (f.coordinator or f.multihost):
    sharding.initialize_distributed(f.coordinator, f.num_processes, f.process_id, log)
  enable_compilation_cache(f.compilation_cache, log)
  if "stop_grace_s" in f:
    stop.install(f.stop_grace_s, log)
