"""Scoring photos with the model shipped in the package or a trained workdir.

  import bmqa_jax
  metric = bmqa_jax.create_metric()        # the shipped model (workdir=DIR: your run)
  metric("photo.jpg")                      # array([0.43], dtype=float32)
  metric(["a.jpg", "photos/", "shots/**/*.png"])   # files, folders, globs
  metric(np.asarray(PIL.Image.open("photo.jpg")))  # arrays ([H,W,C], [N,H,W,C]), PIL

A score is the model's predicted mean opinion score (MOS) on [0, 1]: 0 is the
worst quality, 1 the best (`metric.score_range`, `metric.lower_better` is
False). Each image is read in the view its model was trained for
(`view='auto'`): the centre crop for `config.input.mode='resize'`, the mean
over the native-scale `eval_grid` windows for `'native'` (never resampled). For
resize models `view='tiles'` averages the scores of a grid of model-sized crops
of the image resized so that its short side is `tile_short_side`. Each image is
scored alone (its views form the batch), so its score never depends on what
else is scored; the same photo gives the same score as a path, an array or a
PIL image. The program is compiled once per process (jit) and kept in XLA's
persistent compilation cache (`bmqa_jax.runtime.enable_compilation_cache`).

`Metric.iter_files` is what `bmqa-score` runs: one `Result` per file as soon as
it is known, a file that cannot be read (or whose score is not finite)
reported by name and the rest still scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from PIL import Image
import tqdm

from bmqa_jax import runtime
from bmqa_jax.bmqa import evaluate
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.bmqa import shipped
from bmqa_jax.data import image_io
from bmqa_jax.data import photo_inputs
from bmqa_jax.data import pipeline

VIEWS = ("auto", "center", "tiles")


@dataclasses.dataclass
class Result:
  path: str
  score: float | None
  error: str = ""


class ScoringError(ValueError):
  """Some inputs could not be scored; `results` holds every input's Result."""

  def __init__(self, results: list[Result]):
    self.results = results
    failed = [r for r in results if r.score is None]
    super().__init__(
      f"{len(failed)} of {len(results)} image(s) could not be scored: "
      + "; ".join(f"{r.path}: {r.error}" for r in failed[:5])
      + ("; ..." if len(failed) > 5 else "")
    )


def create_metric(
  workdir: str | os.PathLike | None = None,
  *,
  view: str = "auto",
  text: str | None = None,
  batch_size: int = 16,
  tile_short_side: int = 512,
  compilation_cache: str | None = None,
) -> "Metric":
  """A quality scorer: the model shipped in the package, or a trained workdir's.

  Args:
    workdir: a training workdir (`bmqa-train --workdir`); None: the shipped model.
    view: 'auto' (the view the model was trained for), 'center' or 'tiles'
      (models trained on resized images only).
    text: the quality description scored with every image, for models trained
      with descriptions (`metric(images, text=...)` gives one per image).
    batch_size: most views of one image per step.
    tile_short_side: with view='tiles', the short side the image is resized to.
    compilation_cache: None turns on XLA's persistent cache in its default
      folder (`runtime.default_cache_dir()`) unless the process already set
      one; a folder uses that one; '' leaves the process's setting alone.

  Returns:
    A `Metric`: `metric(inputs) -> np.ndarray` of scores in [0, 1], higher is better.

  Called before JAX has started, it also picks XLA:CPU's kernel libraries as
  the commands do (`runtime.tune_cpu`), so both give the same scores as fast.
  """
  return _create(
    workdir,
    "",
    view=view,
    text=text,
    batch_size=batch_size,
    tile_short_side=tile_short_side,
    compilation_cache=compilation_cache,
  )


def _create(
  workdir,
  asset_dir: str,
  *,
  view: str = "auto",
  text: str | None = None,
  batch_size: int = 16,
  tile_short_side: int = 512,
  compilation_cache: str | None = None,
) -> "Metric":
  if view not in VIEWS:
    raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be at least 1, got {batch_size}")
  runtime.tune_cpu()  # only before JAX starts; a no-op after
  if compilation_cache is None and not jax.config.jax_compilation_cache_dir:
    runtime.enable_compilation_cache(log=lambda *_: None)
  elif compilation_cache:
    runtime.enable_compilation_cache(compilation_cache, log=lambda *_: None)
  workdir = os.fspath(workdir) if workdir else ""
  if workdir:
    if not os.path.isdir(workdir):
      raise FileNotFoundError(
        f"workdir {workdir!r} is not a folder (a training "
        "workdir holds config.json and checkpoints/)"
      )
    config_sha256 = evaluate.config_hash(workdir)
    cfg, _, variables, tok, ckpt = evaluate._load_model(workdir)  # pylint: disable=protected-access
    identity = dict(
      workdir=os.path.abspath(workdir),
      stage=ckpt["stage"],
      step=ckpt["step"],
      config_sha256=config_sha256,
    )
    name = os.path.abspath(workdir)
  else:
    asset_dir = asset_dir or shipped.ASSET_DIR
    cfg, _, variables, tok = shipped.load(asset_dir)
    identity = dict(
      name=shipped.NAME, sha256=_files_sha256(asset_dir, ("config.json", "heads.safetensors"))
    )
    name = shipped.NAME
  cfg = cfg.copy_and_resolve_references()
  model = bmqa_lib.from_config(cfg, tok.vocab_size if tok else None)
  pcfg = pipeline.from_config(cfg)
  if view != "auto" and pcfg.mode != "resize":
    raise ValueError(
      f"view={view!r} is for models trained on resized images; this "
      "one reads native-scale windows: use view='auto'"
    )
  return Metric(
    cfg,
    model,
    {k: v for k, v in variables.items() if v},
    tok,
    name=name,
    identity=identity,
    view=view,
    text=text,
    batch_size=batch_size,
    tile_short_side=tile_short_side,
  )


def _files_sha256(folder: str, names: Sequence[str]) -> str:
  h = hashlib.sha256()
  for n in names:
    with open(os.path.join(folder, n), "rb") as f:
      h.update(hashlib.sha256(f.read()).digest())
  return h.hexdigest()


class Metric:
  """Scores photos; see the module's docstring and `create_metric`."""

  lower_better = False
  score_range = (0.0, 1.0)

  def __init__(
    self,
    cfg,
    model,
    variables,
    tokenizer,
    *,
    name: str,
    identity: dict,
    view: str,
    text: str | None,
    batch_size: int,
    tile_short_side: int,
  ):
    self.cfg, self.name, self.view, self.text = cfg, name, view, text
    self.needs_text = tokenizer is not None
    self._identity, self._tok, self._variables = identity, tokenizer, variables
    self._pcfg = pipeline.from_config(cfg)
    self._batch_size, self._tile_short_side = batch_size, tile_short_side
    self._predict = jax.jit(
      lambda v, images, ids, mask: model.apply(v, images, ids, mask, train=False)["score"]
    )

  def __repr__(self) -> str:
    return (
      f"Metric(name={self.name!r}, view={self.view!r}, score_range="
      f"{self.score_range}, lower_better={self.lower_better})"
    )

  def identity(self) -> dict[str, Any]:
    """What makes these scores: the model (shipped: name and digest of its
    files; workdir: folder, stage, step, config digest), view and text (None
    for a model that reads none)."""
    out = dict(
      model=dict(self._identity),
      view=self.view,
      text=self.text if self.needs_text else None,
      score_range=list(self.score_range),
      lower_better=self.lower_better,
    )
    if self.view == "tiles":
      out["tile_short_side"] = self._tile_short_side
    return out

  def __call__(
    self,
    inputs,
    text: str | Sequence[str] | Mapping[str, str] | None = None,
    *,
    progress: bool = False,
  ) -> np.ndarray:
    """Scores of `inputs`, one per image, in order (float32, in [0, 1]).

    `inputs`: a path (`str` or `os.PathLike`: a file, a folder, a glob), a PIL
    image, an array (`[H, W, C]` or a batch `[N, H, W, C]`; uint8, or floats
    in [0, 1]), or a list of any of these. `text` (models trained with
    descriptions): one for all, a list with one per image, or a dict from file
    path to text; default: create_metric's `text`. Raises `ScoringError`
    naming every input that could not be scored (its `results` keep the rest).
    """
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    entries = []  # (label, path or uint8 image or None, error)
    for i, item in enumerate(items):
      if isinstance(item, (str, os.PathLike)):
        entries += [(p, None if why else p, why) for p, why in photo_inputs.expand([item])]
      elif not isinstance(item, Image.Image) and hasattr(item, "__array__"):
        batch = photo_inputs.split_batch(np.asarray(item))
        entries += [
          (f"array {i}" + (f"[{j}]" if len(batch) > 1 else ""), a, "") for j, a in enumerate(batch)
        ]
      else:
        entries.append((f"input {i}", item, ""))
    texts = self._texts(text, [label for label, _, _ in entries])
    results = []
    for (label, source, why), t in tqdm.tqdm(
      list(zip(entries, texts)), disable=not progress, desc="scoring", unit="img"
    ):
      if why:
        results.append(Result(label, None, why))
        continue
      results.append(self._result(label, lambda s=source, l=label: self._read(s, l), t))
    if any(r.score is None for r in results):
      raise ScoringError(results)
    return np.array([r.score for r in results], np.float32)

  def iter_files(
    self,
    items: Iterable[str | os.PathLike],
    *,
    texts: Mapping[str, str] | None = None,
    skip: Iterable[str] = (),
    progress: bool = False,
  ) -> Iterator[Result]:
    """A Result per file of `items` (files, folders, globs), in order, as soon
    as it is known; files in `skip` are left out. `texts`: file path
    (absolute) → description, else the metric's `text`."""
    if self.needs_text and not self.text and not texts:
      raise ValueError(
        "this model reads a quality description with each image: pass "
        "--text (one description for all) or --descriptions (a CSV "
        "with image,text columns)"
      )
    skip = set(skip)
    entries = [e for e in photo_inputs.expand(items) if e[0] not in skip]
    for path, why in tqdm.tqdm(entries, disable=not progress, desc="scoring", unit="img"):
      if why:
        yield Result(path, None, why)
      else:
        text = (texts or {}).get(os.path.abspath(path), self.text)
        yield self._result(path, lambda p=path: self._read(p, p), text)

  def _texts(self, text, labels: list[str]) -> list[str | None]:
    if text is None or isinstance(text, str):
      return [text if text is not None else self.text] * len(labels)
    if isinstance(text, Mapping):
      return [text.get(os.path.abspath(l), text.get(l, self.text)) for l in labels]
    text = list(text)
    if len(text) != len(labels):
      raise ValueError(f"{len(text)} texts for {len(labels)} images: give one per image")
    return text

  def _read(self, source, label: str) -> np.ndarray:
    if isinstance(source, str):
      return image_io.read_image_uint8(source, max_pixels=self._pcfg.max_pixels)
    return photo_inputs.to_uint8(source, label)

  def _result(self, label: str, read, text: str | None) -> Result:
    """Scores one image; any failure of this image is its Result's error."""
    if self.needs_text and not text:
      return Result(label, None, "no description for this image (the model reads one)")
    try:
      score = self.score_image(read(), text, name=label)
    except Exception as e:  # pylint: disable=broad-except
      # One image's failure (unreadable, too large for memory, ...) is reported
      # with it and never stops the others.
      return Result(
        label,
        None,
        str(e) if isinstance(e, image_io.ImageReadError) else f"{type(e).__name__}: {e}",
      )
    if not np.isfinite(score):
      return Result(
        label,
        None,
        f"the model's score is not finite ({score}): the weights or the image are damaged",
      )
    return Result(label, score)

  def score_image(
    self, image: np.ndarray, text: str | None = None, *, name: str = "<image>"
  ) -> float:
    """The score of one uint8 RGB image `[H, W, 3]` (`name` names it in errors)."""
    crops = views(image, self._pcfg, self.view, self._tile_short_side, name)
    ids = mask = None
    if self.needs_text:
      ids, mask = self._tok.encode([text or self.text], self.cfg.input.max_text_len)
    scores = []
    bs = min(self._batch_size, len(crops))
    for i in range(0, len(crops), bs):
      chunk = crops[i : i + bs]
      n = len(chunk)
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, 0)])
      b_ids = None if ids is None else np.repeat(ids, bs, 0)
      b_mask = None if mask is None else np.repeat(mask, bs, 0)
      scores.append(np.asarray(self._predict(self._variables, chunk, b_ids, b_mask))[:n])
    return float(np.mean(np.concatenate(scores)))


def views(
  img: np.ndarray,
  pcfg: pipeline.PipelineConfig,
  view: str,
  tile_short_side: int,
  name: str = "<image>",
) -> np.ndarray:
  """uint8 image → normalised float crops [K, size, size, 3]. An image whose
  padded or resized form is over the pixel bound is refused before it is made
  (`pipeline.check_size`: `image_io.ImageReadError` naming `name`)."""
  if view == "auto" or (view == "center" and pcfg.mode == "resize"):
    v = pipeline.eval_views(img, pcfg, name)
    return v if v.ndim == 4 else v[None]
  if pcfg.mode != "resize":
    raise ValueError(
      f"view={view!r} is for models trained on resized images; this "
      "one reads native-scale windows: use view='auto'"
    )
  if view == "tiles":
    size = pcfg.image_size
    h, w = img.shape[:2]
    pipeline.check_size(h, w, pcfg, name, short_side=tile_short_side)
    s = max(tile_short_side, size) / min(h, w)
    img = pipeline._resize(img, (max(size, round(h * s)), max(size, round(w * s))))  # pylint: disable=protected-access
    h, w = img.shape[:2]
    ys = np.linspace(0, h - size, max(1, int(np.ceil(h / size)))).round().astype(int)
    xs = np.linspace(0, w - size, max(1, int(np.ceil(w / size)))).round().astype(int)
    return pipeline._normalise(
      np.stack(
        [
          img[y : y + size, x : x + size]  # pylint: disable=protected-access
          for y in ys
          for x in xs
        ]
      )
    )
  raise ValueError(f"view must be one of {VIEWS}, got {view!r}")


def iter_scores(
  workdir: str,
  paths: Sequence[str],
  *,
  texts: dict[str, str] | None = None,
  default_text: str = "",
  view: str = "auto",
  tile_short_side: int = 512,
  batch_size: int = 16,
  progress: bool = False,
  skip: Iterable[str] = (),
  asset_dir: str = "",
) -> Iterator[Result]:
  """`Metric.iter_files` of a workdir's model, or of the shipped model in
  `asset_dir` (default the package's) when `workdir` is ''."""
  metric = _create(
    workdir,
    asset_dir,
    view=view,
    text=default_text or None,
    batch_size=batch_size,
    tile_short_side=tile_short_side,
  )
  return metric.iter_files(paths, texts=texts, skip=skip, progress=progress)


def read_descriptions(path: str) -> dict[str, str]:
  """image,text CSV (image paths relative to the CSV) → {absolute path: text}."""
  import csv  # pylint: disable=g-import-not-at-top

  base = os.path.dirname(os.path.abspath(path))
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if not rows or "image" not in rows[0] or "text" not in rows[0]:
    raise ValueError(f"{path}: a descriptions CSV needs the columns image,text")
  return {os.path.abspath(os.path.join(base, r["image"])): r["text"] for r in rows}
