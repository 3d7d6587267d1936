"""Tests for bmqa_jax.data.image_io on files written by the tests themselves."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from bmqa_jax.data import image_io
from bmqa_jax.data.image_io import ImageReadError, read_image, read_image_uint8


def _gradient(h=24, w=32):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack(
    [x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], axis=-1
  ).astype(np.uint8)


def _png16(arr: np.ndarray) -> bytes:
  """A minimal 16-bit PNG encoder (filter 0, no interlace), independent of Pillow."""
  h, w, c = arr.shape
  colour_type = {1: 0, 3: 2, 4: 6}[c]
  raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

  def chunk(tag, data):
    return (
      struct.pack(">I", len(data))
      + tag
      + data
      + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )

  ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  return (
    b"\x89PNG\r\n\x1a\n"
    + chunk(b"IHDR", ihdr)
    + chunk(b"IDAT", zlib.compress(raw))
    + chunk(b"IEND", b"")
  )


@pytest.mark.parametrize(
  "ext,fmt", [("png", "PNG"), ("bmp", "BMP"), ("tif", "TIFF"), ("tiff", "TIFF")]
)
def test_lossless_formats_exact(tmp_path, ext, fmt):
  rgb = _gradient()
  path = tmp_path / f"img.{ext}"
  Image.fromarray(rgb).save(path, format=fmt)
  u8 = read_image_uint8(path)
  f32 = read_image(path)
  assert u8.dtype == np.uint8 and u8.shape == (24, 32, 3)
  assert f32.dtype == np.float32 and f32.shape == (24, 32, 3)
  np.testing.assert_array_equal(u8, rgb)
  np.testing.assert_allclose(f32, rgb / 255.0, atol=1e-7)


def test_jpeg_close_to_source(tmp_path):
  rgb = _gradient(64, 64)
  path = tmp_path / "img.jpg"
  Image.fromarray(rgb).save(path, quality=95)
  out = read_image_uint8(path)
  assert out.shape == (64, 64, 3)
  assert np.abs(out.astype(int) - rgb).mean() < 3
  np.testing.assert_allclose(read_image(path), out / 255.0, atol=1e-7)


def test_png16_grey_full_precision(tmp_path):
  grey = np.array([[0, 1, 257, 1000], [32768, 40000, 65534, 65535]], np.uint16)
  path = tmp_path / "grey16.png"
  path.write_bytes(_png16(grey[..., None]))
  f32 = read_image(path)
  assert f32.shape == (2, 4, 3)
  for c in range(3):
    np.testing.assert_allclose(f32[..., c], grey / 65535.0, rtol=1e-6)
  u8 = read_image_uint8(path)
  np.testing.assert_array_equal(u8[..., 0], np.rint(grey / 257.0).astype(np.uint8))


def test_png16_rgb_scaled(tmp_path):
  rgb16 = np.array([[[0, 1000, 65535], [257, 32896, 40000]]], np.uint16)
  path = tmp_path / "rgb16.png"
  path.write_bytes(_png16(rgb16))
  f32 = read_image(path)
  # Pillow decodes 16-bit RGB to 8-bit precision: within one 8-bit step.
  np.testing.assert_allclose(f32, rgb16 / 65535.0, atol=1.0 / 255 + 1e-6)
  assert f32[0, 0, 2] == 1.0 and f32[0, 0, 0] == 0.0


def test_grey_and_palette(tmp_path):
  grey = _gradient()[..., 0]
  Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
  out = read_image_uint8(tmp_path / "g.png")
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
  pal = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
  pal.save(tmp_path / "p.png")
  np.testing.assert_array_equal(
    read_image_uint8(tmp_path / "p.png"), np.asarray(pal.convert("RGB"))
  )
  Image.fromarray(grey > 128).save(tmp_path / "b.png")  # 1-bit
  one_bit = read_image(tmp_path / "b.png")
  np.testing.assert_array_equal(one_bit[..., 1], (grey > 128).astype(np.float32))


def test_rgba_alpha_dropped_or_black(tmp_path):
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., :3] = [200, 100, 50]
  rgba[..., 3] = 255
  rgba[0, 0, 3] = 0
  rgba[1, 1, 3] = 128
  path = tmp_path / "a.png"
  Image.fromarray(rgba, mode="RGBA").save(path)
  dropped = read_image_uint8(path)
  np.testing.assert_array_equal(dropped, rgba[..., :3])
  black = read_image(path, alpha="black")
  np.testing.assert_allclose(black[0, 0], 0.0)
  np.testing.assert_allclose(black[1, 1], np.array([200, 100, 50]) / 255 * 128 / 255, atol=1e-6)
  np.testing.assert_allclose(black[2, 2], np.array([200, 100, 50]) / 255, atol=1e-6)
  np.testing.assert_array_equal(read_image_uint8(path, alpha="black")[0, 0], 0)
  with pytest.raises(ValueError, match="alpha"):
    read_image(path, alpha="white")


def test_exif_orientation(tmp_path):
  rgb = _gradient(16, 40)  # landscape as stored
  img = Image.fromarray(rgb)
  exif = img.getexif()
  exif[0x0112] = 6  # "rotate 90 CW to display"
  path = tmp_path / "rot.png"
  img.save(path, exif=exif.tobytes())
  out = read_image_uint8(path)
  assert out.shape == (40, 16, 3)
  np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))


def test_truncated_jpeg_raises_even_if_flag_set(tmp_path):
  path = tmp_path / "t.jpg"
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(path, quality=90)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ImageReadError, match="truncated") as err:
    read_image(path)
  assert str(path) in str(err.value)
  saved = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = True  # as TFDS's image helpers leave it
  try:
    with pytest.raises(ImageReadError):
      read_image_uint8(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = saved


def test_wrong_case_missing_empty_corrupt(tmp_path):
  Image.fromarray(_gradient()).save(tmp_path / "Photo.JPG")
  with pytest.raises(ImageReadError, match="did you mean") as err:
    read_image(tmp_path / "photo.jpg")
  assert "Photo.JPG" in str(err.value)
  with pytest.raises(ImageReadError, match="file not found"):
    read_image(tmp_path / "nothing.png")
  with pytest.raises(ImageReadError, match="does not exist"):
    read_image(tmp_path / "nodir" / "x.png")
  (tmp_path / "empty.png").write_bytes(b"")
  with pytest.raises(ImageReadError, match="empty file"):
    read_image(tmp_path / "empty.png")
  (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
  with pytest.raises(ImageReadError, match="not a recognised image"):
    read_image_uint8(tmp_path / "junk.png")
  with pytest.raises(ImageReadError, match="folder"):
    read_image(tmp_path)
  assert issubclass(ImageReadError, ValueError)


def test_corrupt_png_data(tmp_path):
  path = tmp_path / "c.png"
  Image.fromarray(_gradient()).save(path)
  data = bytearray(path.read_bytes())
  idat = data.index(b"IDAT")
  data[idat + 8 : idat + 40] = b"\xff" * 32  # garble compressed pixel data
  path.write_bytes(bytes(data))
  with pytest.raises(ImageReadError, match="corrupt"):
    read_image(path)


def test_path_with_spaces_and_parentheses(tmp_path):
  path = tmp_path / "night photo (3).png"
  Image.fromarray(_gradient()).save(path)
  assert read_image(str(path)).shape == (24, 32, 3)


def test_module_leaves_global_flag_alone(tmp_path):
  path = tmp_path / "x.png"
  Image.fromarray(_gradient()).save(path)
  before = ImageFile.LOAD_TRUNCATED_IMAGES
  read_image(path)
  assert ImageFile.LOAD_TRUNCATED_IMAGES == before
  assert image_io._strict_depth == 0


def test_bad_exif_is_reported(tmp_path, monkeypatch):
  path = tmp_path / "x.png"
  Image.fromarray(_gradient()).save(path)

  def broken(img):
    raise SyntaxError("not a TIFF file")

  monkeypatch.setattr(image_io.ImageOps, "exif_transpose", broken)
  with pytest.raises(ImageReadError, match="EXIF orientation") as err:
    read_image(path)
  assert "truncated" not in str(err.value)


def test_tiff16_grey(tmp_path):
  grey = np.array([[0, 300, 65535], [12345, 40000, 1]], np.uint16)
  path = tmp_path / "g16.tif"
  Image.fromarray(grey).save(path)
  np.testing.assert_allclose(read_image(path)[..., 2], grey / 65535.0, rtol=1e-6)
