"""The prepared store: each image of a split decoded once into uint8, on disk.

`config.input.store` says where the pipeline's images come from:

* 'prepared': every image of the split is decoded once
  (`image_io.read_image_uint8`, so a bad file raises `ImageReadError` naming
  it) and stored in one ArrayRecord file that the records point into
  (`image_store`, `image_row`); the grain workers read the uint8 pixels from it
  and augment them as before;
* 'jpeg': each sample's file is decoded again in every epoch;
* 'auto' (default): 'prepared' when the split's decoded size, estimated from the
  image headers (width × height × 3 bytes, no pixel decoded), is under
  `prepared_max_gb`; else 'jpeg' (logged once).

`prepare_short_side` = 0 keeps the decoded pixels exactly: batches are
bit-identical to the JPEG path's. > 0 stores each image resized (bilinear, as
the pipeline resizes) to that short side, never upscaled (choose at least
`resize_size`; the JPEG path, where a split is not prepared, reads the files as
they are); it is refused in mode 'native', whose point is the camera's pixels.

Layout: `<prepared_dir or workdir/prepared>/<key>.array_record`, one file per
split, one entry per record in order: a 12-byte header (height, width,
channels, little-endian uint32) and the raw pixels. The key hashes the ordered
image paths with their size and modification time and the prepare settings:
a changed image or setting builds a new store, an unchanged one is reused. A
store is written under a temporary name in the same folder and renamed when
complete, so a killed build is never read. Under several JAX processes
process 0 builds it while the others wait, then read it (or build their own
where the folder is not shared).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import struct
import time
from typing import Sequence

from array_record.python import array_record_module
import grain
import numpy as np
from PIL import Image

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.data import image_io
from bmqa_jax.data import pipeline
from bmqa_jax.train_lib import workdir as workdir_lib

VERSION = 1
STORES = ("auto", "prepared", "jpeg")
SUFFIX = ".array_record"
_HEADER = struct.Struct("<III")  # height, width, channels
_WRITER_OPTIONS = "group_size:1,uncompressed"  # random access, no decompression
_CHUNK = 64  # images decoded at a time while building
_THREADS = min(16, os.cpu_count() or 1)  # decoding threads (Pillow frees the GIL)
_told: set[str] = set()  # the 'auto' fallbacks already logged


class Store:
  """The images of a prepared store by row. Picklable: each process (grain
  worker) opens the file itself, on its first read."""

  def __init__(self, path: str):
    self.path = path
    self._source = None

  def __getstate__(self) -> dict:
    return {"path": self.path}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state["path"])

  def __repr__(self) -> str:
    return f"Store({self.path!r})"

  def _reader(self) -> grain.sources.ArrayRecordDataSource:
    if self._source is None:
      self._source = grain.sources.ArrayRecordDataSource(self.path)
    return self._source

  def __len__(self) -> int:
    return len(self._reader())

  def image(self, row: int) -> np.ndarray:
    """The uint8 [H, W, C] image of `row` (a read-only view of the entry)."""
    entry = self._reader()[row]
    h, w, c = _HEADER.unpack_from(entry)
    if len(entry) != _HEADER.size + h * w * c:
      raise ValueError(
        f"prepared store {self.path!r}, entry {row}: {len(entry)} "
        f"bytes for a {h}x{w}x{c} image (corrupt; delete the file)"
      )
    return np.frombuffer(entry, np.uint8, offset=_HEADER.size).reshape(h, w, c)


def _encode(img: np.ndarray) -> bytes:
  return _HEADER.pack(*img.shape) + np.ascontiguousarray(img).tobytes()


def stored_size(height: int, width: int, short_side: int) -> tuple[int, int]:
  """(height, width) of an image as stored: its short side at most `short_side`
  (0: as decoded)."""
  if not short_side or min(height, width) <= short_side:
    return height, width
  s = short_side / min(height, width)
  return round(height * s), round(width * s)


def _stored_image(path: str, pcfg: pipeline.PipelineConfig) -> np.ndarray:
  img = image_io.read_image_uint8(path, max_pixels=pcfg.max_pixels)
  size = stored_size(*img.shape[:2], pcfg.prepare_short_side)
  if size == img.shape[:2]:
    return img
  return pipeline._resize(img, size)  # pylint: disable=protected-access


def _header_size(path: str) -> tuple[int, int]:
  """(height, width) from the image's header, no pixel decoded."""
  try:
    with Image.open(path) as img:
      return img.height, img.width
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise image_io.ImageReadError(path, f"cannot read its header ({e})") from e


def decoded_bytes(paths: Sequence[str], short_side: int = 0) -> int:
  """The size of `paths` as stored (uint8 RGB), from their headers."""
  return sum(3 * h * w for h, w in (stored_size(*_header_size(p), short_side) for p in paths))


def store_key(paths: Sequence[str], pcfg: pipeline.PipelineConfig) -> str:
  """A hash of the ordered images (path, size, modification time) and the
  prepare settings."""
  h = hashlib.sha256(json.dumps(dict(version=VERSION, short_side=pcfg.prepare_short_side)).encode())
  for p in paths:
    try:
      st = os.stat(p)
    except OSError as e:
      raise image_io.ImageReadError(p, f"cannot stat file ({e})") from e
    h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:24]


def store_path(paths: Sequence[str], pcfg: pipeline.PipelineConfig, workdir: str) -> str:
  """Where the store of `paths` lives: `prepared_dir`, or `workdir/prepared`."""
  root = os.path.expanduser(pcfg.prepared_dir or os.path.join(workdir, "prepared"))
  return os.path.join(root, store_key(paths, pcfg) + SUFFIX)


def build(path: str, paths: Sequence[str], pcfg: pipeline.PipelineConfig, log=log_lib.info) -> None:
  """Decodes `paths` in order into the store `path` (written under a temporary
  name in the same folder, renamed when complete)."""
  folder = os.path.dirname(path)
  os.makedirs(folder, exist_ok=True)
  t, size = time.perf_counter(), 0
  with workdir_lib.replacing(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)
    try:
      with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        for start in range(0, len(paths), _CHUNK):
          for img in pool.map(lambda p: _stored_image(p, pcfg), paths[start : start + _CHUNK]):
            writer.write(_encode(img))
            size += img.nbytes
    finally:
      writer.close()
  log(
    f"prepared {len(paths)} images ({size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s: {path}"
  )


def _check(pcfg: pipeline.PipelineConfig) -> None:
  if pcfg.store not in STORES:
    raise ValueError(f"config.input.store={pcfg.store!r}: one of {STORES}")
  n = pcfg.prepare_short_side
  if not isinstance(n, int) or n < 0:
    raise ValueError(
      f"config.input.prepare_short_side={n!r}: a pixel count (0: keep the decoded pixels)"
    )
  if n and pcfg.mode != "resize":
    raise ValueError(
      f"config.input.prepare_short_side={n} stores resized images, but "
      f"config.input.mode={pcfg.mode!r} reads the camera's pixels: set it to 0 "
      "(it is for mode='resize' only)"
    )


def _use_store(paths: Sequence[str], pcfg: pipeline.PipelineConfig, log) -> bool:
  """Whether `config.input.store` prepares these images (see the module doc)."""
  if pcfg.store != "auto":
    return pcfg.store == "prepared"
  size = decoded_bytes(paths, pcfg.prepare_short_side)
  if size <= pcfg.prepared_max_gb * 1e9:
    return True
  why = (
    f"{len(paths)} images decode to {size / 1e9:.1f} GB, over "
    f"config.input.prepared_max_gb={pcfg.prepared_max_gb:g}: they are "
    "decoded from their files in every epoch (config.input.store='prepared' "
    "prepares them anyway)"
  )
  if why not in _told:
    _told.add(why)
    log(why)
  return False


def open_store(
  paths: Sequence[str], pcfg: pipeline.PipelineConfig, workdir: str, log=log_lib.info
) -> Store:
  """The store of `paths`, built first if there is none (by process 0; the
  others wait for it)."""
  path = store_path(paths, pcfg, workdir)

  def build_or_reuse() -> str:
    if not os.path.exists(path):  # one line when built; nothing when reused
      build(path, paths, pcfg, log)
    return path

  if sharding.on_process_zero(build_or_reuse, "prepared_store") is None:
    build_or_reuse()  # reads process 0's store (builds one if not shared)
  store = Store(path)
  if len(store) != len(paths):
    raise ValueError(
      f"prepared store {path!r} holds {len(store)} images, not "
      f"{len(paths)}: delete it to rebuild it"
    )
  return store


def attach(
  records: Sequence[dict],
  pcfg: pipeline.PipelineConfig,
  workdir: str,
  log=log_lib.info,
  build: bool = True,
) -> Sequence[dict]:
  """`records` reading their images from the prepared store when
  `config.input.store` prepares them (`image_store`, `image_row`; `path`
  stays), else `records` as they are. `build=False` (a pass that reads each
  image once, such as `evaluate`) uses a store only where one exists."""
  _check(pcfg)
  paths = [r["path"] for r in records]
  if not paths or (not build and not os.path.exists(store_path(paths, pcfg, workdir))):
    return records  # (no image header read for a store that is not there)
  if not _use_store(paths, pcfg, log):
    return records
  store = open_store(paths, pcfg, workdir, log)
  return [dict(r, image_store=store, image_row=np.int32(i)) for i, r in enumerate(records)]
