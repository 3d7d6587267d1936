"""Native-scale views: crops that keep the camera's pixels (`config.input.mode='native'`).

Low-light quality is made of noise, blur and compression at the pixel level;
resampling a photo to 128 px erases most of it. In native mode no image is ever
resized:

* training reads one random `crop`×`crop` window (and a horizontal flip);
* evaluation and scoring read a fixed `rows`×`cols` grid of such windows,
  spread evenly over the image (corners included), and average the scores.
  A 1×1 grid is the centre window; with `crop` equal to the photo's size it is
  the whole photo.

Images smaller than the window on a side are mirror-padded up to it
(never upsampled), so images of any size batch together.
"""

from __future__ import annotations

import numpy as np


def pad_to(img: np.ndarray, crop: int) -> np.ndarray:
  """Pads `img` [H, W, C] by mirroring (edge pixels repeated) to at least
  `crop` on both sides; larger images are returned as they are."""
  ph, pw = max(0, crop - img.shape[0]), max(0, crop - img.shape[1])
  if not ph and not pw:
    return img
  return np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="symmetric")


def random_crop(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
  """One `crop`×`crop` window at a uniformly random position (no resampling)."""
  img = pad_to(img, crop)
  h, w = img.shape[:2]
  y = int(rng.integers(0, h - crop + 1))
  x = int(rng.integers(0, w - crop + 1))
  return img[y : y + crop, x : x + crop]


def grid_positions(size: int, crop: int, n: int) -> list[int]:
  """`n` window starts spread evenly over [0, size − crop] (centre when n = 1)."""
  if n == 1:
    return [(size - crop) // 2]
  return [int(round(p)) for p in np.linspace(0, size - crop, n)]


def grid_crops(img: np.ndarray, crop: int, grid: tuple[int, int]) -> np.ndarray:
  """The evaluation views: `rows`·`cols` windows [K, crop, crop, C], row-major."""
  rows, cols = grid
  if rows < 1 or cols < 1:
    raise ValueError(f"config.input.eval_grid={grid}: both counts must be ≥ 1")
  img = pad_to(img, crop)
  h, w = img.shape[:2]
  return np.stack(
    [
      img[y : y + crop, x : x + crop]
      for y in grid_positions(h, crop, rows)
      for x in grid_positions(w, crop, cols)
    ]
  )
