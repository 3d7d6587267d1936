"""Reading photos from disk into RGB arrays, with errors that name the file.

:func:`read_image` returns float32 ``[H, W, 3]`` in [0, 1]; :func:`read_image_uint8`
returns uint8 ``[H, W, 3]`` (what the input pipeline keeps in memory). Both share
one decoder (Pillow) and one set of rules:

* formats: whatever Pillow decodes — JPEG, PNG, BMP, TIFF, WebP, GIF (first frame);
* EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), so a portrait
  photo from a phone comes out upright;
* greyscale (1-bit, 8-bit, 16-bit) is replicated to three channels; palette images
  are expanded through their palette;
* 16-bit greyscale PNG/TIFF keeps full precision in :func:`read_image`
  (value / 65535) and is rounded to 8 bits (value / 257) in :func:`read_image_uint8`.
  16-bit RGB(A) PNGs are decoded by Pillow to 8-bit precision (the high byte of
  each sample); values stay correctly scaled;
* alpha (RGBA, LA, palette transparency) is **dropped** by default — the colour
  channels are kept as stored, which is what ``PIL.Image.convert('RGB')`` (and so
  torchvision / pyiqa loaders) do, so scores agree with other toolboxes.
  ``alpha='black'`` composites onto black instead (``rgb * alpha``);
* decoded size is bounded: an image of more than ``max_pixels`` pixels
  (default :data:`MAX_PIXELS`, 100 megapixels, about 300 MB as uint8 RGB and
  four times that as float32) is refused from its header, before any pixel is
  decoded — a small file (a 12000x12000 PNG of one colour is ~140 KB) can
  otherwise decode to gigabytes. Raise it per call (``max_pixels=``), for the
  process (``image_io.MAX_PIXELS = ...``), or through ``config.input.max_pixels``
  where the pipeline passes it; ``max_pixels=0`` removes the bound (Pillow's own
  decompression-bomb limit, ``PIL.Image.MAX_IMAGE_PIXELS``, still applies);
  the same bound covers what the views make of an image (``pipeline.check_size``:
  mirror-padded to the native window, resized to the short side), so an image
  of extreme aspect (a 19 KB, 1 x 20,000,000 PNG padded to 512 rows is 10
  gigapixels) is refused, naming the file, before anything is allocated;
* a missing file, a wrong-cased name (with a "did you mean" hint), an empty or
  zero-sized image, an unknown format, a truncated or corrupt file, or an image
  over the pixel bound or Pillow's decompression-bomb limit raise
  :class:`ImageReadError` (a ``ValueError``) whose message holds the path and
  the reason.

Truncated files: Pillow silently fills the missing part of a truncated JPEG with
grey when the global ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True, and
TensorFlow Datasets sets it to True as a side effect of some of its image helpers.
The readers here force it to False while they decode (restoring the previous value
when no read is in flight), so a truncated file always raises.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

ALPHA_MODES = ("drop", "black")
MAX_PIXELS = 100_000_000  # default bound on width * height; see the module doc
_UINT16_MAX = 65535.0
_UINT8_MAX = 255.0
# 65535 / 255: one 8-bit step in 16-bit units.
_UINT16_PER_UINT8 = 257.0


class ImageReadError(ValueError):
  """An image file could not be read; the message names the file and the reason."""

  def __init__(self, path: str | os.PathLike, reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f"cannot read image {self.path!r}: {reason}")


# Reference count of reads in flight, so concurrent readers (grain worker threads)
# do not restore the global flag under each other's feet.
_strict_lock = threading.Lock()
_strict_depth = 0
_strict_saved = False


@contextmanager
def _strict_truncation() -> Iterator[None]:
  global _strict_depth, _strict_saved
  with _strict_lock:
    if _strict_depth == 0:
      _strict_saved = ImageFile.LOAD_TRUNCATED_IMAGES
    _strict_depth += 1
    ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    with _strict_lock:
      _strict_depth -= 1
      if _strict_depth == 0:
        ImageFile.LOAD_TRUNCATED_IMAGES = _strict_saved


def _missing_file_reason(path: str) -> str:
  folder, name = os.path.split(os.path.abspath(path))
  if not os.path.isdir(folder):
    return f"file not found (folder {folder!r} does not exist)"
  try:
    matches = sorted(f for f in os.listdir(folder) if f.lower() == name.lower() and f != name)
  except OSError:
    matches = []
  if matches:
    return (
      f"file not found; did you mean {os.path.join(folder, matches[0])!r}? "
      "(file names are case-sensitive)"
    )
  return "file not found"


def pixel_bound(max_pixels: int | None) -> int:
  """The bound in pixels: `max_pixels`, `MAX_PIXELS` for None; 0: none."""
  bound = MAX_PIXELS if max_pixels is None else max_pixels
  if not (
    not isinstance(bound, bool)
    and isinstance(bound, (int, float, np.number))
    and np.isfinite(bound)
    and bound >= 0
    and bound == int(bound)
  ):
    raise ValueError(f"max_pixels must be a non-negative integer (0: no bound), got {bound!r}")
  return int(bound)


def _check_pixels(img: Image.Image, path: str, bound: int) -> None:
  """Refuses an image larger than ``bound`` pixels from its header (no decoding)."""
  pixels = img.width * img.height
  if bound and pixels > bound:
    raise ImageReadError(
      path,
      f"{img.width}x{img.height} is {pixels / 1e6:.1f} megapixels, over the "
      f"bound of {bound / 1e6:g} megapixels ({bound} pixels) that keeps a small "
      "file from decoding to gigabytes; to read it, raise the bound: "
      "max_pixels= on the read call, config.input.max_pixels, or "
      "bmqa_jax.data.image_io.MAX_PIXELS",
    )


def _open_decoded(path: str, max_pixels: int | None = None) -> Image.Image:
  """Opens, fully decodes and orients ``path``; every failure is an ImageReadError."""
  bound = pixel_bound(max_pixels)
  if not os.path.exists(path):
    raise ImageReadError(path, _missing_file_reason(path))
  if os.path.isdir(path):
    raise ImageReadError(path, "is a folder, not an image file")
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise ImageReadError(path, f"cannot stat file ({e})") from e
  if size == 0:
    raise ImageReadError(path, "empty file (0 bytes)")
  try:
    with _strict_truncation():
      with Image.open(path) as img:  # reads the header only
        _check_pixels(img, path, bound)
        img.load()  # Decode now: lazy decoding would hide truncation until later.
        try:
          img = ImageOps.exif_transpose(img)  # Returns a loaded copy.
        except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error) as e:
          raise ImageReadError(
            path, f"unreadable EXIF orientation data ({type(e).__name__}: {e})"
          ) from e
  except ImageReadError:
    raise
  except UnidentifiedImageError as e:
    raise ImageReadError(path, "not a recognised image format (or corrupt header)") from e
  except Image.DecompressionBombError as e:
    raise ImageReadError(
      path, f"image too large ({e}); Pillow's limit is PIL.Image.MAX_IMAGE_PIXELS"
    ) from e
  except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
    # Pillow raises OSError("image file is truncated ...") for truncated data and
    # OSError/SyntaxError/ValueError for corrupt streams.
    raise ImageReadError(path, f"truncated or corrupt file ({type(e).__name__}: {e})") from e
  if img.width == 0 or img.height == 0:
    raise ImageReadError(path, f"zero-size image ({img.width}x{img.height})")
  return img


_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_IMAGE_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _has_alpha(img: Image.Image) -> bool:
  return img.mode in _ALPHA_IMAGE_MODES or (img.mode == "P" and "transparency" in img.info)


def _grey16(img: Image.Image, path: str) -> np.ndarray:
  """16-bit greyscale (PNG, TIFF) as float32 on the 0..65535 scale, [H, W]."""
  grey = np.asarray(img).astype(np.float32)
  # 'I' (32-bit) is how some Pillow versions hand out 16-bit PNGs; its values are
  # taken on the 16-bit scale and must fit it.
  if img.mode == "I" and grey.size and (grey.min() < 0 or grey.max() > _UINT16_MAX):
    raise ImageReadError(
      path,
      f"32-bit integer image with values outside [0, 65535] "
      f"({grey.min()}..{grey.max()}); unsupported",
    )
  return grey


def _to_rgb_float(img: Image.Image, path: str, alpha: str) -> np.ndarray:
  """Converts a decoded Pillow image to float32 [H, W, 3] in [0, 1]."""
  if img.mode in _GREY16_MODES:
    grey = _grey16(img, path) / _UINT16_MAX
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.mode == "F":
    grey = np.asarray(img, dtype=np.float32)
    if not np.all(np.isfinite(grey)):
      raise ImageReadError(path, "floating-point image contains NaN/inf")
    return np.repeat(np.clip(grey, 0.0, 1.0)[..., None], 3, axis=-1)
  if alpha == "black" and _has_alpha(img):
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / _UINT8_MAX
    return rgba[..., :3] * rgba[..., 3:4]
  if img.mode != "RGB":
    img = img.convert("RGB")  # Drops alpha; expands grey and palette; CMYK/YCbCr.
  return np.asarray(img, dtype=np.float32) / _UINT8_MAX


def _to_rgb_uint8(img: Image.Image, path: str, alpha: str) -> np.ndarray:
  """Converts a decoded Pillow image to uint8 [H, W, 3] (no float round trip for 8-bit)."""
  if img.mode in _GREY16_MODES:
    grey8 = np.rint(_grey16(img, path) / _UINT16_PER_UINT8).astype(np.uint8)
    return np.repeat(grey8[..., None], 3, axis=-1)
  if img.mode == "F" or (alpha == "black" and _has_alpha(img)):
    return np.rint(_to_rgb_float(img, path, alpha) * _UINT8_MAX).astype(np.uint8)
  if img.mode != "RGB":
    img = img.convert("RGB")
  return np.array(img, dtype=np.uint8)


def _check_alpha(alpha: str) -> None:
  if alpha not in ALPHA_MODES:
    raise ValueError(f"alpha must be one of {ALPHA_MODES}, got {alpha!r}")


def read_image(
  path: str | os.PathLike, *, alpha: str = "drop", max_pixels: int | None = None
) -> np.ndarray:
  """Reads an image as float32 RGB ``[H, W, 3]`` in [0, 1].

  Args:
    path: file path.
    alpha: 'drop' (default; keep the stored colour) or 'black' (composite onto black).
    max_pixels: refuse an image of more pixels (checked from the header, before
      decoding); None: :data:`MAX_PIXELS`; 0: no bound.

  Raises:
    ImageReadError: the file is missing, wrongly cased, empty, not an image,
      truncated, corrupt, zero-sized or too large.
  """
  _check_alpha(alpha)
  path = os.fspath(path)
  img = _open_decoded(path, max_pixels)
  return np.ascontiguousarray(_to_rgb_float(img, path, alpha), dtype=np.float32)


def read_image_uint8(
  path: str | os.PathLike, *, alpha: str = "drop", max_pixels: int | None = None
) -> np.ndarray:
  """Reads an image as uint8 RGB ``[H, W, 3]`` (same rules as :func:`read_image`)."""
  _check_alpha(alpha)
  path = os.fspath(path)
  img = _open_decoded(path, max_pixels)
  return np.ascontiguousarray(_to_rgb_uint8(img, path, alpha))
