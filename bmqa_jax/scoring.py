"""Scoring image files with a trained workdir.

`score_files(workdir, paths)` expands files, folders and glob patterns, reads each
image (JPEG, PNG 8/16-bit, grey, RGBA, BMP, TIFF; EXIF orientation honoured), and
predicts its quality. `view='center'` scores the evaluation view (short side
resized, centre crop), as in training's evaluation; `view='tiles'` averages the
scores of a grid of crops at the model's input size taken from the image resized
so that its short side is `tile_short_side`, which keeps every pixel region in
play for large photos while the memory used stays bounded by one batch of crops.
A file that cannot be read is reported by name and the rest are still scored.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterable, Sequence

import jax
import numpy as np
import tqdm

from bmqa_jax.data import image_io
from bmqa_jax.data import pipeline

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass
class Result:
  path: str
  score: float | None
  error: str = ""


def expand(paths: Sequence[str]) -> list[str]:
  """Files as given; folders (recursively) and globs to their image files, sorted."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for root, _, files in os.walk(p):
        out += [os.path.join(root, f) for f in sorted(files)
                if f.lower().endswith(IMAGE_EXTENSIONS)]
    elif any(c in p for c in "*?["):
      out += sorted(glob.glob(p, recursive=True))
    else:
      out.append(p)
  return out


def views(img: np.ndarray, size: int, resize_size: int, view: str,
          tile_short_side: int) -> np.ndarray:
  """uint8 image → normalised float crops [K, size, size, 3]."""
  if view == "center":
    crops = [pipeline.center_crop(img, resize_size, size)]
  elif view == "tiles":
    h, w = img.shape[:2]
    s = max(tile_short_side, size) / min(h, w)
    img = pipeline._resize(img, (max(size, round(h * s)), max(size, round(w * s))))  # pylint: disable=protected-access
    h, w = img.shape[:2]
    ys = np.linspace(0, h - size, max(1, int(np.ceil(h / size)))).round().astype(int)
    xs = np.linspace(0, w - size, max(1, int(np.ceil(w / size)))).round().astype(int)
    crops = [img[y:y + size, x:x + size] for y in ys for x in xs]
  else:
    raise ValueError(f"view must be 'center' or 'tiles', got {view!r}")
  return np.stack([pipeline._normalise(c) for c in crops])  # pylint: disable=protected-access


def score_files(workdir: str, paths: Sequence[str], *, texts: dict[str, str] | None = None,
                default_text: str = "", view: str = "center", tile_short_side: int = 512,
                batch_size: int = 16, progress: bool = True) -> list[Result]:
  from bmqa_jax import evaluate  # pylint: disable=g-import-not-at-top
  cfg, model, variables, tok = evaluate.load_model(workdir)
  variables = {k: v for k, v in variables.items() if v}
  size, resize = cfg.input.image_size, cfg.input.resize_size
  files = expand(paths)
  if not files:
    raise FileNotFoundError(f"no image files in {list(paths)}")
  if tok is not None and not default_text and not texts:
    raise ValueError("this model reads a quality description with each image: pass "
                     "--text (one description for all) or --descriptions (a CSV "
                     "with image,text columns)")

  @jax.jit
  def predict(variables, images, ids, mask):
    return model.apply(variables, images, ids, mask, train=False)["score"]

  results = []
  for path in tqdm.tqdm(files, disable=not progress, desc="scoring", unit="img"):
    try:
      crops = views(image_io.read_image_uint8(path), size, resize, view,
                    tile_short_side)
    except (image_io.ImageReadError, OSError) as e:
      results.append(Result(path, None, str(e)))
      continue
    ids = mask = None
    if tok is not None:
      text = (texts or {}).get(os.path.abspath(path), default_text)
      if not text:
        results.append(Result(path, None, "no description for this image"))
        continue
      ids, mask = tok.encode([text], cfg.input.max_text_len)
    scores = []
    for i in range(0, len(crops), batch_size):
      chunk = crops[i:i + batch_size]
      n = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
      b_ids = None if ids is None else np.repeat(ids, batch_size, 0)
      b_mask = None if mask is None else np.repeat(mask, batch_size, 0)
      scores.append(np.asarray(predict(variables, chunk, b_ids, b_mask))[:n])
    results.append(Result(path, float(np.mean(np.concatenate(scores)))))
  return results


def read_descriptions(path: str) -> dict[str, str]:
  """image,text CSV (image paths relative to the CSV) → {absolute path: text}."""
  import csv  # pylint: disable=g-import-not-at-top
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "image" not in rows[0] or "text" not in rows[0]:
    raise ValueError(f"{path}: a descriptions CSV needs the columns image,text")
  return {os.path.abspath(os.path.join(base, r["image"])): r["text"] for r in rows}


def write(results: Iterable[Result], path: str) -> None:
  """CSV or JSON (by extension) with path, score, error."""
  import csv  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  results = list(results)
  tmp = path + ".tmp"
  with open(tmp, "w", newline="") as f:
    if path.endswith(".json"):
      json.dump([dataclasses.asdict(r) for r in results], f, indent=1)
    else:
      w = csv.writer(f)
      w.writerow(["path", "score", "error"])
      for r in results:
        w.writerow([r.path, "" if r.score is None else f"{r.score:.5f}", r.error])
  os.replace(tmp, path)
