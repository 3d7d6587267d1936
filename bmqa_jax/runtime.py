"""What every launch script does before its first JAX computation.

`define_flags()` adds the absl flags; `start()` then

* turns on XLA's persistent compilation cache (`--compilation_cache`, default
  `default_cache_dir()`; '' turns it off): a second
  `launch/score.py`, or a resumed training run, loads its compiled programs
  instead of compiling them again;
* with `cluster=True` flags, starts the cluster (`sharding.initialize_distributed`):
  `--multihost` (SLURM or Cloud TPU variables) or `--coordinator=HOST:PORT
  --num_processes=N --process_id=I` (any scheduler).
"""

from __future__ import annotations

import os

import jax

from bmqa_jax import sharding


def default_cache_dir() -> str:
  """JAX's own JAX_COMPILATION_CACHE_DIR when set, else $BMQA_CACHE_DIR/xla or
  ~/.cache/bmqa_jax/xla."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  root = os.environ.get("BMQA_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "bmqa_jax"))
  return os.path.join(root, "xla")


def enable_compilation_cache(path: str | None = None) -> str:
  """XLA's persistent cache in `path` (None: `default_cache_dir()`); returns it.
  Programs that compile in under 0.5 s are not worth a file and are left out."""
  path = default_cache_dir() if path is None else path
  if path:
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def define_flags(cluster: bool = True) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("compilation_cache", None, "XLA compilation cache folder "
                      "(default $BMQA_CACHE_DIR/xla or ~/.cache/bmqa_jax/xla; '': off).")
  if not cluster:
    return
  flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the "
                    "cluster read from SLURM or Cloud TPU variables.")
  flags.DEFINE_string("coordinator", None, "HOST:PORT of process 0 (with "
                      "--num_processes and --process_id): a cluster of any scheduler.")
  flags.DEFINE_integer("num_processes", None, "Processes of the job (--coordinator).")
  flags.DEFINE_integer("process_id", None, "This process's index (--coordinator).")


def start(log=print) -> None:
  """The compilation cache, then the cluster when the flags ask for one."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  enable_compilation_cache(f.compilation_cache)
  if "coordinator" in f and (f.coordinator or f.multihost):
    sharding.initialize_distributed(f.coordinator, f.num_processes, f.process_id, log)
