"""Scoring image files with a trained workdir, or with the shipped model.

`score_files(workdir, paths)` expands files, folders and glob patterns, reads each
image (JPEG, PNG 8/16-bit, grey, RGBA, BMP, TIFF; EXIF orientation honoured), and
predicts its quality. `view='auto'` (default) scores the view the model was
trained for: the centre crop for `config.input.mode='resize'`, the mean over the
native-scale `eval_grid` windows for `'native'` (never resampled). For resize
models `view='tiles'` averages the scores of a grid of crops at the model's input
size taken from the image resized so that its short side is `tile_short_side`.
Without a workdir (`workdir=''`) the model shipped in the package scores
(`bmqa_jax.bmqa.shipped`). A file that cannot be read is reported by name and the
rest are still scored; `iter_scores` yields each result as soon as it is known.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Iterable, Iterator, Sequence

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


def views(img: np.ndarray, cfg, view: str, tile_short_side: int) -> np.ndarray:
  """uint8 image → normalised float crops [K, size, size, 3] (`cfg`: a run's config)."""
  pcfg = pipeline.from_config(cfg)
  if view == "auto" or (view == "center" and pcfg.mode == "resize"):
    v = pipeline.eval_views(img, pcfg)
    return v if v.ndim == 4 else v[None]
  if pcfg.mode != "resize":
    raise ValueError(f"view={view!r} is for models trained on resized images; this "
                     "one reads native-scale windows: use view='auto'")
  if view == "tiles":
    size = pcfg.image_size
    h, w = img.shape[:2]
    s = max(tile_short_side, size) / min(h, w)
    img = pipeline._resize(img, (max(size, round(h * s)), max(size, round(w * s))))  # pylint: disable=protected-access
    h, w = img.shape[:2]
    ys = np.linspace(0, h - size, max(1, int(np.ceil(h / size)))).round().astype(int)
    xs = np.linspace(0, w - size, max(1, int(np.ceil(w / size)))).round().astype(int)
    return pipeline._normalise(np.stack([img[y:y + size, x:x + size]  # pylint: disable=protected-access
                                         for y in ys for x in xs]))
  raise ValueError(f"view must be 'auto', 'center' or 'tiles', got {view!r}")


def load(workdir: str, asset_dir: str = ""):
  """(config, model, variables, tokenizer) of a workdir, or of the shipped
  model (in `asset_dir`, default the package's) when `workdir` is ''."""
  if not workdir:
    from bmqa_jax.bmqa import shipped  # pylint: disable=g-import-not-at-top
    return shipped.load(asset_dir or shipped.ASSET_DIR)
  from bmqa_jax.bmqa import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.load_model(workdir)


def iter_scores(workdir: str, paths: Sequence[str], *, texts: dict[str, str] | None = None,
                default_text: str = "", view: str = "auto", tile_short_side: int = 512,
                batch_size: int = 16, progress: bool = True,
                skip: Iterable[str] = (), asset_dir: str = "") -> Iterator[Result]:
  """Yields a Result per file, in order (files in `skip` are left out)."""
  cfg, model, variables, tok = load(workdir, asset_dir)
  variables = {k: v for k, v in variables.items() if v}
  files = expand(paths)
  if not files:
    raise FileNotFoundError(f"no image files in {list(paths)}")
  skip = set(skip)
  files = [f for f in files if f not in skip]
  if tok is not None and not default_text and not texts:
    raise ValueError("this model reads a quality description with each image: pass "
                     "--text (one description for all) or --descriptions (a CSV "
                     "with image,text columns)")

  @jax.jit
  def predict(variables, images, ids, mask):
    return model.apply(variables, images, ids, mask, train=False)["score"]

  for path in tqdm.tqdm(files, disable=not progress, desc="scoring", unit="img"):
    try:
      crops = views(image_io.read_image_uint8(
          path, max_pixels=pipeline.from_config(cfg).max_pixels), cfg, view, tile_short_side)
    except (image_io.ImageReadError, OSError) as e:
      yield Result(path, None, str(e))
      continue
    ids = mask = None
    if tok is not None:
      text = (texts or {}).get(os.path.abspath(path), default_text)
      if not text:
        yield Result(path, None, "no description for this image")
        continue
      ids, mask = tok.encode([text], cfg.input.max_text_len)
    scores = []
    bs = min(batch_size, len(crops))
    for i in range(0, len(crops), bs):
      chunk = crops[i:i + bs]
      n = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, 0)])
      b_ids = None if ids is None else np.repeat(ids, bs, 0)
      b_mask = None if mask is None else np.repeat(mask, bs, 0)
      scores.append(np.asarray(predict(variables, chunk, b_ids, b_mask))[:n])
    yield Result(path, float(np.mean(np.concatenate(scores))))


def score_files(workdir: str, paths: Sequence[str], **kwargs) -> list[Result]:
  """Every result of `iter_scores` as a list."""
  return list(iter_scores(workdir, paths, **kwargs))


def read_descriptions(path: str) -> dict[str, str]:
  """image,text CSV (image paths relative to the CSV) → {absolute path: text}."""
  import csv  # pylint: disable=g-import-not-at-top
  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or "image" not in rows[0] or "text" not in rows[0]:
    raise ValueError(f"{path}: a descriptions CSV needs the columns image,text")
  return {os.path.abspath(os.path.join(base, r["image"])): r["text"] for r in rows}


class ResultLog:
  """`--out` kept up to date as results come, so a killed run loses nothing.

  A `.csv` gets one flushed row per result; a `.json` is rewritten atomically
  after each result. An existing file is resumed: its scored files are kept
  (`done`) and not scored again; its failed ones are tried again.
  """

  def __init__(self, path: str):
    import csv  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    self.path, self.json = path, path.endswith(".json")
    old: list[Result] = []
    if os.path.exists(path):
      with open(path, newline="") as f:
        if self.json:
          old = [Result(**r) for r in json.load(f)]
        else:
          old = [Result(r["path"], float(r["score"]) if r["score"] else None,
                        r.get("error", "")) for r in csv.DictReader(f)]
    self.results = [r for r in old if r.score is not None]
    self.done = {r.path for r in self.results}
    self._rewrite()
    self._file = None if self.json else open(path, "a", newline="")
    self._csv = None if self.json else csv.writer(self._file)

  def _rewrite(self) -> None:
    import csv  # pylint: disable=g-import-not-at-top
    import json  # pylint: disable=g-import-not-at-top
    tmp = self.path + ".tmp"
    with open(tmp, "w", newline="") as f:
      if self.json:
        json.dump([dataclasses.asdict(r) for r in self.results], f, indent=1)
      else:
        w = csv.writer(f)
        w.writerow(["path", "score", "error"])
        for r in self.results:
          w.writerow(_row(r))
    os.replace(tmp, self.path)

  def add(self, r: Result) -> None:
    self.results.append(r)
    if self.json:
      self._rewrite()
    else:
      self._csv.writerow(_row(r))
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _row(r: Result) -> list:
  return [r.path, "" if r.score is None else f"{r.score:.5f}", r.error]
