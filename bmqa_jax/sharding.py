"""Device mesh and placement: a (data, model) Mesh, batch over `data`, FSDP over `model`.

The same code runs on one CPU, several GPUs or many hosts: with several processes
call `jax.distributed.initialize()` before anything else (launch/train.py
--multihost); each process then feeds its share of the global batch.

`config.mesh = dict(data=-1, model=1)` (bmqa_jax/defaults.py) puts every device
on the `data` axis: parameters and optimiser state are replicated and the batch
is split (data parallelism). With `model=M > 1` the devices form a
`data × M` grid; every parameter of at least `config.mesh.shard_min_size`
elements, and the optimiser moments of the same shape, is split into M pieces
along its largest axis divisible by M (fully-sharded data parallelism), so the
large towers (ConvNeXt-B, ViT-B) need 1/M of the memory per device. XLA gathers
the pieces where a layer needs them; the result equals data parallelism.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from bmqa_jax import log as log_lib


def make_mesh(cfg: mlc.ConfigDict, devices=None) -> Mesh:
  """The ('data', 'model') mesh of `config.mesh` over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  mcfg = cfg.mesh
  model = int(mcfg.model)
  if model < 1 or n % model:
    raise ValueError(f"config.mesh.model={model} does not divide the {n} devices")
  data = mcfg.data if mcfg.data > 0 else n // model
  if data * model != n:
    raise ValueError(
      f"config.mesh.data={mcfg.data} × config.mesh.model={model} "
      f"is not the {n} devices there are; use data=-1"
    )
  return Mesh(np.asarray(devices).reshape(data, model), ("data", "model"))


def data_size(mesh: Mesh) -> int:
  return mesh.shape["data"]


def check_batch(batch_size: int, mesh: Mesh, what: str, accum_steps: int = 1) -> None:
  """Raises unless `batch_size` splits evenly into microbatches over `data`."""
  n = data_size(mesh)
  if batch_size % n:
    raise ValueError(
      f"{what}: global batch {batch_size} is not divisible by the "
      f"{n} devices of the mesh's data axis; choose a multiple of {n}"
    )
  if batch_size % (n * accum_steps):
    raise ValueError(
      f"{what}: global batch {batch_size} does not split into "
      f"{accum_steps} microbatches (grad_accum_steps) over {n} "
      f"devices; choose a multiple of {n * accum_steps}"
    )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def leaf_spec(shape: tuple[int, ...], model: int, min_size: int) -> P:
  """P with 'model' on the largest axis divisible by `model` (ties: the last)."""
  if model <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  axes = [i for i, d in enumerate(shape) if d % model == 0]
  if not axes:
    return P()
  best = max(axes, key=lambda i: (shape[i], i))
  return P(*[("model" if i == best else None) for i in range(len(shape))])


def state_sharding(tree: Any, mesh: Mesh, min_size: int) -> Any:
  """A NamedSharding per leaf of a (params or train-state) shape tree.

  The rule depends on the shape only, so Adam's moments get the sharding of
  their parameter; scalars (step, counts) are replicated.
  """
  model = mesh.shape["model"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, leaf_spec(tuple(x.shape), model, min_size)), tree
  )


def jit_step(step_fn, state_sharding, mesh: Mesh):
  """`step_fn(state, batch, rng) -> (state, metrics)` jitted on the mesh: the
  state in `state_sharding` (donated), the batch split over `data`, the rng and
  the metrics replicated. Every trainer's step goes through here."""
  rep = replicated(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(state_sharding, batch_sharding(mesh), rep),
    out_shardings=(state_sharding, rep),
    donate_argnums=(0,),
  )


def min_shard_size(cfg) -> int:
  """`config.mesh.shard_min_size`: the smallest parameter split over `model`."""
  return int(cfg.mesh.shard_min_size)


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch → global arrays sharded over `data`."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v)) for k, v in batch.items()}


def local_rows(batch: dict) -> dict:
  """This process's rows of a global host batch that every process computed
  (process i of n takes the i-th of n equal blocks), for `put_batch`."""
  n, i = jax.process_count(), jax.process_index()
  if n == 1:
    return batch
  size = len(next(iter(batch.values())))
  if size % n:
    raise ValueError(f"global batch {size} is not divisible by the {n} processes")
  k = size // n
  return {key: v[i * k : (i + 1) * k] for key, v in batch.items()}


def slurm_local_device_ids(environ=None) -> list[int] | None:
  """Every GPU of the host when SLURM runs one task per node, else None.

  `jax.distributed.initialize()` reads the cluster from SLURM's variables but
  then gives each process only the GPU numbered by its local task id (one task
  per GPU). With one task per host (launch/slurm/train.sbatch) the process must
  own all the host's GPUs instead: SLURM_GPUS_ON_NODE of them.
  """
  env = os.environ if environ is None else environ
  per_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
  gpus = env.get("SLURM_GPUS_ON_NODE", "")
  if "SLURM_JOB_ID" in env and per_node.split("(")[0] == "1" and gpus.isdigit():
    return list(range(int(gpus)))
  return None


def initialize_distributed(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  log=log_lib.info,
) -> None:
  """`jax.distributed.initialize()`: the cluster from explicit arguments (any
  scheduler: `coordinator` 'HOST:PORT', `num_processes`, `process_id`), else
  from the environment (SLURM with one task per host, Cloud TPU). CPU
  collectives (gloo) are selected, so that CPU devices of several processes
  reduce across processes; accelerators use their own."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator needs --num_processes and --process_id")
    jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
  else:
    jax.distributed.initialize(local_device_ids=slurm_local_device_ids())
  log(
    f"process {jax.process_index()}/{jax.process_count()}: "
    f"{jax.local_device_count()} local of {jax.device_count()} devices"
  )


def to_host(tree):
  """Numpy copies of (global) arrays on every process: gathered across
  processes when an array spans several (`multihost_utils.process_allgather`)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return jax.tree.map(
    lambda x: (
      np.asarray(multihost_utils.process_allgather(x, tiled=True))
      if isinstance(x, jax.Array)
      else x
    ),
    tree,
  )


def gather_local(x: np.ndarray) -> np.ndarray:
  """Every process's host rows of `x`, concatenated in process order (the order
  `put_batch` lays them out in a global batch)."""
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  out = np.asarray(multihost_utils.process_allgather(np.asarray(x)))
  return out.reshape((-1,) + out.shape[2:])


SYNC_TIMEOUT_S = 3600.0  # process 0 may build a dataset's store meanwhile


class ProcessWaitError(RuntimeError):
  """A barrier of the processes timed out; the message names who was missing."""


def sync(name: str, timeout_s: float | None = None) -> None:
  """A barrier of all processes (nothing with one process), on the
  coordination service: after `timeout_s` (default `SYNC_TIMEOUT_S`) it raises
  `ProcessWaitError` naming the processes that did not come, instead of
  waiting forever as a device collective would."""
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  timeout_s = SYNC_TIMEOUT_S if timeout_s is None else timeout_s
  _sync_count[name] = _sync_count.get(name, 0) + 1
  barrier = f"bmqa_jax/{name}/{_sync_count[name]}"
  try:
    distributed.global_state.client.wait_at_barrier(barrier, int(timeout_s * 1000))
  except Exception as e:  # pylint: disable=broad-except
    detail = " ".join(str(e).split())
    raise ProcessWaitError(
      f"process {jax.process_index()} waited {timeout_s:g} s at '{name}' for the "
      f"other processes of {jax.process_count()}; the coordination service says: "
      f"{detail[:600]}"
    ) from e


_sync_count: dict[str, int] = {}


def on_process_zero(fn, name: str):
  """Runs `fn()` on process 0 only (it writes a shared file), then all processes
  meet; returns `fn`'s result on process 0 and None elsewhere."""
  out = fn() if jax.process_index() == 0 else None
  sync(name)
  return out
