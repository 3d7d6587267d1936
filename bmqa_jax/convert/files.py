"""Weight files: PyTorch state dicts in (``.pth`` without PyTorch, ``.safetensors``),
orbax checkpoints of converted variables out (``launch/convert_weights.py``).

Nothing is downloaded: callers pass files they have.
"""

from __future__ import annotations

import os
import shutil
from typing import Mapping

import numpy as np

from bmqa_jax import torch_file
from bmqa_jax.convert.torchvision import ConversionError, drop_head, flatten, from_torch

Array = np.ndarray


def load_state_dict(path: str) -> dict[str, Array]:
  """Reads a PyTorch state dict from ``.safetensors`` or a ``torch.save`` file
  (``.pth``/``.pt``/``.bin``, read by :mod:`bmqa_jax.torch_file` without
  PyTorch and without running pickled code). A checkpoint dict holding the
  weights under ``'state_dict'`` or ``'model'`` is unwrapped, and a
  ``'module.'`` prefix (``DataParallel``) is removed. Returns name → numpy array
  (floating tensors as float32)."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    sd = load_file(path)
  else:
    obj = torch_file.load(path)
    for wrapper in ("state_dict", "model"):
      if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
        obj = obj[wrapper]
    if not isinstance(obj, Mapping):
      raise ConversionError(
        f"{path}: expected a state dict (name → tensor), got {type(obj).__name__}"
      )
    sd = {}
    for k, v in obj.items():
      if not isinstance(v, np.ndarray):
        raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
      sd[k] = v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module.") :]: v for k, v in sd.items()}
  return sd


def convert_file(
  name: str, src: str, out: str, keep_head: bool = False, num_classes: int | None = None
) -> int:
  """PyTorch weights file → orbax checkpoint at ``out``; returns the value count.

  Written to ``out + '.tmp'`` first and renamed when complete, so ``out``
  exists only as a whole checkpoint (:func:`save_variables`)."""
  kwargs = {} if num_classes is None else {"num_classes": num_classes}
  variables = from_torch(name, load_state_dict(src), **kwargs)
  if not (keep_head or num_classes):
    variables = drop_head(name, variables)
  return save_variables(variables, out)


def save_variables(variables, out: str) -> int:
  """Writes ``variables`` as an orbax checkpoint at ``out`` (via ``out + '.tmp'``,
  renamed when complete); returns the value count."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  out = os.path.abspath(out)
  tmp = out + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp, variables)
  checkpointer.wait_until_finished()
  os.replace(tmp, out)
  return sum(v.size for tree in variables.values() for v in flatten(tree).values())
