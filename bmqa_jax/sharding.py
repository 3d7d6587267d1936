"""Device mesh and placement: the batch is split over the `data` axis of a Mesh.

The same code runs on one CPU, several GPUs or many hosts: with several processes
call `jax.distributed.initialize()` before anything else (see launch/train.py);
each process then feeds its share of the global batch.
"""

from __future__ import annotations

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(cfg: mlc.ConfigDict) -> Mesh:
  n = jax.device_count()
  data = cfg.mesh.data if cfg.mesh.data > 0 else n
  if data != n:
    raise ValueError(f"config.mesh.data={cfg.mesh.data} but there are {n} devices")
  return Mesh(np.asarray(jax.devices()).reshape(data), ("data",))


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ValueError(f"{what}: global batch {batch_size} is not divisible by the "
                     f"{mesh.size} devices of the mesh; choose a multiple of "
                     f"{mesh.size}")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch → global arrays sharded over `data`."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
          for k, v in batch.items()}
