"""What a scorer is given, as photos: paths, folders, globs, arrays, PIL images.

`expand(items)` turns files, folders and glob patterns into image files, in the
order given, each file once (two names of one file, by a link or an overlapping
pattern, are one file). Folders are read recursively for the extensions in
`IMAGE_EXTENSIONS`; a glob's matches are taken as they are (a folder it matches
is read as a folder); `**` matches any depth of real folders, and neither it
nor a folder walk follows a link to a folder (`sub/up -> ..` would otherwise
list every photo again at every depth, and two such links never end). A
pattern that matches nothing, and a folder without images, are reported, not
skipped.

`to_uint8(image)` turns one array or PIL image into the uint8 RGB `[H, W, 3]`
that image files are read into (`image_io.read_image_uint8`): uint8 as it is,
floats in [0, 1] times 255 rounded, grey replicated, alpha dropped (as for
files). `split_batch` takes `[N, H, W, C]` apart.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

# What a folder walk picks up: what image_io decodes (GIF: its first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_MAGIC = "*?["


def is_pattern(item: str) -> bool:
  return any(c in item for c in _MAGIC)


def expand(items: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str]]:
  """Yields (file, '') per image file, or (item, why) for an item that names
  no image: a pattern that matches nothing, a folder without image files."""
  seen: set[str] = set()
  for item in items:
    item = os.fspath(item)
    if os.path.isdir(item):
      files = _walk(item)
      why = (
        ""
        if files
        else (
          f"no image files in this folder (looked for "
          f"{', '.join(IMAGE_EXTENSIONS)}, in sub-folders too)"
        )
      )
    elif is_pattern(item) and not os.path.exists(item):
      files = []
      for match in _glob(item):
        files += _walk(match) if os.path.isdir(match) else [match]
      why = "" if files else "no file matches this pattern"
    else:
      files, why = [item], ""  # a missing file is the reader's to report
    if why:
      yield item, why
    for f in files:
      key = os.path.realpath(f)
      if key not in seen:
        seen.add(key)
        yield f, ""


def _walk(folder: str) -> list[str]:
  """Image files under `folder`, sorted, without following links to folders."""
  out = []
  for root, dirs, files in os.walk(folder):  # followlinks=False
    dirs.sort()
    out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
  return out


def _glob(pattern: str) -> list[str]:
  """`glob.glob`, except that `**` walks real folders only (no link loops)."""
  if "**" not in pattern:
    return sorted(glob.glob(pattern))
  parts = pattern.split(os.sep)
  fixed = 0  # the leading parts without magic name the folder the walk starts in
  while not is_pattern(parts[fixed]):
    fixed += 1
  root = os.sep.join(parts[:fixed]) or (os.sep if pattern.startswith(os.sep) else "")
  out = []
  for top, dirs, files in os.walk(root or os.curdir):  # followlinks=False
    dirs.sort()
    rel = os.path.relpath(top, root or os.curdir)
    here = [] if rel == os.curdir else rel.split(os.sep)
    real_dirs = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
    out += [
      os.path.join(root, *here, name)
      for name in sorted(real_dirs + files)
      if _match(here + [name], parts[fixed:])
    ]
  return out


def _match(parts: list[str], pats: list[str]) -> bool:
  """Glob's rules per path component: `**` is any number of components, and a
  hidden name matches only a pattern that starts with '.'."""
  if not pats:
    return not parts
  if pats[0] == "**":
    return _match(parts, pats[1:]) or (
      bool(parts) and not parts[0].startswith(".") and _match(parts[1:], pats)
    )
  return (
    bool(parts)
    and (not parts[0].startswith(".") or pats[0].startswith("."))
    and fnmatch.fnmatchcase(parts[0], pats[0])
    and _match(parts[1:], pats[1:])
  )


def split_batch(array: np.ndarray) -> list[np.ndarray]:
  """An image `[H, W]`, `[H, W, C]` or a batch `[N, H, W, C]` → its images."""
  if array.ndim == 4:
    return list(array)
  if array.ndim in (2, 3):
    return [array]
  raise ValueError(
    f"an image array is [H, W, C] or a batch [N, H, W, C] (C: 1, 3 "
    f"or 4); got shape {tuple(array.shape)}"
  )


def to_uint8(image, what: str = "image") -> np.ndarray:
  """A PIL image or an array → uint8 RGB `[H, W, 3]` (see the module's doc)."""
  if isinstance(image, Image.Image):
    if image.mode not in ("1", "L", "P", "RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"):
      raise ValueError(
        f"{what}: a PIL image of mode {image.mode!r}; give an 8-bit one (or its file's path)"
      )
    return np.asarray(image.convert("RGB"), np.uint8)
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or 0 in array.shape:
    raise ValueError(
      f"{what}: expected an image [H, W, C] with C = 1, 3 or 4 "
      f"(channels last); got shape {tuple(array.shape)}"
    )
  if array.dtype == np.uint8:
    pass
  elif np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)):
      raise ValueError(f"{what}: holds NaN or infinite values")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0 or hi > 1:
      raise ValueError(
        f"{what}: float images are in [0, 1]; this one spans "
        f"[{lo:g}, {hi:g}] (uint8 images: give them as uint8)"
      )
    array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
  else:
    raise ValueError(f"{what}: dtype {array.dtype}; give uint8, or floats in [0, 1]")
  array = array[..., :3]  # alpha is dropped, as for files
  if array.shape[-1] == 1:
    array = np.repeat(array, 3, axis=-1)
  return np.ascontiguousarray(array)
