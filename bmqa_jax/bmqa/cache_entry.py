"""One entry of the frozen-tower feature cache (`bmqa_jax.bmqa.feature_cache`):
a `.npz` of float16 arrays `level0`, `level1`, .. ([views, tokens, channels]),
written atomically by any process on any host and checked whenever it is read.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bmqa_jax.train_lib import workdir as workdir_lib

DTYPE = np.float16


class DamagedEntry(ValueError):
  """A cache entry that cannot be used; the message says why."""


def read_entry(path: str, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
  """The arrays of the entry at `path`, checked: a readable `.npz` holding
  exactly `level0`.. of `shapes` (float16), every value finite. Raises
  `DamagedEntry` (a truncated or empty file, a wrong key, shape or dtype, a
  NaN) so that the caller rebuilds it; `FileNotFoundError` when it is absent."""
  try:
    with np.load(path, allow_pickle=False) as z:
      names = sorted(z.files)
      want = [f"level{i}" for i in range(len(shapes))]
      if names != sorted(want):
        raise DamagedEntry(f"holds {names}, expected {want}")
      out = [z[k] for k in want]
  except FileNotFoundError:
    raise
  except DamagedEntry:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # zipfile.BadZipFile (truncated), EOFError (empty), ValueError/OSError
    # (a corrupt member): all mean the same here.
    raise DamagedEntry(f"unreadable ({type(e).__name__}: {e})") from e
  for k, (a, shape) in enumerate(zip(out, shapes)):
    if a.dtype != DTYPE or a.shape != tuple(shape):
      raise DamagedEntry(
        f"level{k} is {a.dtype}{list(a.shape)}, expected {np.dtype(DTYPE)}{list(shape)}"
      )
    if not np.isfinite(a).all():
      raise DamagedEntry(f"level{k} holds {int((~np.isfinite(a)).sum())} non-finite values")
  return out


def write(path: str, outs: Sequence[np.ndarray]) -> None:
  """Writes an entry atomically (`workdir.atomic_write`): any process on any
  host; readers see the old entry or the new one, never a part."""
  workdir_lib.atomic_write(
    path, lambda f: np.savez(f, **{f"level{i}": o.astype(DTYPE) for i, o in enumerate(outs)})
  )
