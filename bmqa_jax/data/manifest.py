"""Reading and validating dataset manifests (README.md, 'Your own data').

A manifest is a CSV or JSONL file, one row per sample, with columns
`image` (path relative to the manifest), `mos` (float in [0, 1]), `scene`
(split key), and optional `text`, `audio`, `device`, `split`. Every check runs
before training starts; an error names the manifest row (1-based, counting the
header as row 1 for CSV so it matches what a spreadsheet shows; the line for
JSONL) and the file. Files are UTF-8 (a spreadsheet's BOM is fine); a JSONL
line must be an object; a column may not appear twice; no field may exceed
`MAX_FIELD` characters; a scene may not be in two splits, nor an image under
two scenes or in two splits (or twice). Rows without a `split` column are
split 8:1:1 by scene with the config's seed (`load(split_seed=)`). The cheap
checks run on every row before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from bmqa_jax import log as log_lib
from bmqa_jax.data import image_io
from bmqa_jax.data import manifest_files
from bmqa_jax.data.manifest_files import MAX_FIELD, ManifestError, read_rows  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Sample:
  image: str  # absolute path
  mos: float  # NaN when the manifest has no scores (scoring only)
  scene: str
  split: str = ""
  device: str = ""
  text: str = ""
  audio: str = ""  # absolute path or ""
  row: int = 0  # the row number in the manifest, for messages


def _field(row: dict, column: str) -> str:
  value = row.get(column)
  return "" if value is None else str(value)


def scene_key(scene) -> str:
  """How scenes are compared for leakage: Unicode-normalised, without
  surrounding spaces, case-insensitive ('Kitchen ' and 'kitchen' are one scene)."""
  return unicodedata.normalize("NFKC", "" if scene is None else str(scene)).strip().casefold()


def check_scene_splits(rows: Iterable[tuple[int, dict]], path: str) -> None:
  """Refuses a scene whose rows name two different splits (rows without a
  split are ignored): a model would be tested on scenes it trained on. Scenes
  are compared by `scene_key`; the error names every such scene (up to 5),
  its splits and rows."""
  seen: dict[str, tuple[str, int, str]] = {}
  where: dict[str, dict[str, list[int]]] = {}
  first = ""
  for number, row in rows:
    split, scene = _field(row, "split"), _field(row, "scene")
    key = scene_key(scene)
    if not split or not key:
      continue
    first_split, first_row, first_name = seen.setdefault(key, (split, number, scene))
    where.setdefault(key, {}).setdefault(split, []).append(number)
    if first_split != split and not first:
      named = (
        f"scene {scene!r}"
        if scene == first_name
        else (
          f"scene {scene!r} (the same scene as {first_name!r}: scene names are "
          "compared without case and surrounding spaces)"
        )
      )
      first = (
        f"{path}, row {number}: {named} is in split {split!r} here but in "
        f"{first_split!r} at row {first_row}"
      )
  if first:
    leaks = [(seen[k][2], v) for k, v in where.items() if len(v) > 1]
    listed = "; ".join(
      f"{name!r}: " + ", ".join(f"{sp} (rows {_rows(r)})" for sp, r in splits.items())
      for name, splits in leaks[:5]
    )
    more = f" and {len(leaks) - 5} more" if len(leaks) > 5 else ""
    raise ManifestError(
      f"{first}; all rows of a scene must be in one split "
      "(bmqa_jax.data.scenes.write_split_manifest writes scene-wise splits). "
      f"{len(leaks)} scene(s) are in several splits: {listed}{more}"
    )


def check_same_images(samples: Iterable[Sample], path: str, duplicates: bool = True) -> None:
  """Refuses an image listed under two scenes or in two splits (a leak: the
  model would be tested on a photo it trained on) and, with `duplicates`, an
  image listed twice under one scene and split (its MOS counted twice), naming
  both rows. Images are compared by their path (normalised; no file is
  opened). Caption manifests (no MOS) may describe an image several times."""
  seen: dict[str, Sample] = {}
  for s in samples:
    key = os.path.normcase(os.path.normpath(s.image))
    first = seen.setdefault(key, s)
    if first is s:
      continue
    same = f"image {s.image!r}"
    if scene_key(s.scene) != scene_key(first.scene):
      why = f"under scene {s.scene!r} here and {first.scene!r} at row {first.row}"
    elif s.split != first.split:
      why = f"in split {s.split!r} here and {first.split!r} at row {first.row}"
    elif not duplicates:
      continue
    else:
      raise ManifestError(
        f"{path}, row {s.row}: {same} is listed twice (rows "
        f"{first.row} and {s.row}); keep one row per image"
      )
    raise ManifestError(
      f"{path}, row {s.row}: {same} is {why}: the same photo in "
      "two scenes or splits leaks between training and testing; "
      "keep one row per image"
    )


def _rows(numbers: list[int]) -> str:
  return ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")


def check_disjoint_scenes(
  main_path: str,
  pretrain_path: str,
  held_out_splits: Sequence[str] = ("val", "test"),
  pretrain_splits: Sequence[str] | None = ("train",),
) -> None:
  """Refuses a pretraining manifest that holds a scene of the main manifest's
  held-out splits: the model would have seen those scenes (their clean photos
  and descriptions) before it is validated or tested on them.

  Rows of `pretrain_path` count when their `split` is in `pretrain_splits`
  (the rows pretraining reads; None, or no `split` column: every row).
  Scenes are compared by `scene_key`; unreadable rows are ignored here (the
  loads report them).
  """
  held: dict[str, tuple[str, str, int]] = {}
  for number, row in manifest_files.read(main_path)[0]:
    if isinstance(row, dict) and _field(row, "split") in held_out_splits:
      held.setdefault(
        scene_key(_field(row, "scene")), (_field(row, "scene"), _field(row, "split"), number)
      )
  held.pop("", None)
  entries, columns = manifest_files.read(pretrain_path)
  every = pretrain_splits is None or "split" not in columns
  leaks = {}
  for number, row in entries:
    if isinstance(row, dict) and (every or _field(row, "split") in pretrain_splits):
      key = scene_key(_field(row, "scene"))
      if key in held:
        leaks.setdefault(key, []).append(number)
  if leaks:
    listed = "; ".join(
      f"{held[k][0]!r} ({held[k][1]} at {main_path}, row {held[k][2]}; pretraining rows {_rows(r)})"
      for k, r in list(leaks.items())[:5]
    )
    raise ManifestError(
      f"{pretrain_path}: {len(leaks)} scene(s) of the held-out split(s) "
      f"{list(held_out_splits)} of {main_path} are in the pretraining data: "
      f"{listed}{' and more' if len(leaks) > 5 else ''}; drop them from the "
      "pretraining manifest (or give it the main manifest's split)"
    )


def _parse_mos(value, where: str, require: bool, mos_range) -> float:
  if value is None or (isinstance(value, str) and not value.strip()):
    if require:
      raise ManifestError(f"{where}: no MOS (empty `mos`)")
    return math.nan
  if isinstance(value, bool):  # JSON true/false would read as 1.0/0.0
    raise ManifestError(f"{where}: MOS {value!r} is not a number")
  try:
    mos = float(value)
  except (ValueError, TypeError):
    raise ManifestError(f"{where}: MOS {value!r:.40} is not a number") from None
  if not math.isfinite(mos):
    raise ManifestError(f"{where}: MOS is {mos} (not a finite number)")
  lo, hi = mos_range
  if not lo <= mos <= hi:
    raise ManifestError(f"{where}: MOS {mos} is outside [{lo}, {hi}]")
  return mos


def _resolve(base: str, rel: str, where: str, column: str) -> str:
  path = rel if os.path.isabs(rel) else os.path.join(base, rel)
  if os.path.isdir(path):
    raise ManifestError(f"{where}: {column} {path!r} is a folder, not a file")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    hint = ""
    if os.path.isdir(folder):
      low = os.path.basename(path).lower()
      match = [n for n in os.listdir(folder) if n.lower() == low]
      if match:
        hint = f" (did you mean {match[0]!r}? paths are case-sensitive)"
    raise ManifestError(f"{where}: {column} file {path!r} does not exist{hint}")
  return path


def load(
  path: str,
  *,
  require_mos: bool = True,
  require_text: bool = False,
  check_images: bool = True,
  check_audio: bool = False,
  splits: Sequence[str] | None = None,
  skip_bad: bool = False,
  mos_range: tuple[float, float] = (0.0, 1.0),
  log=log_lib.info,
  max_pixels: int | None = None,
  split_seed: int | None = None,
) -> list[Sample]:
  """Reads a manifest and checks every row.

  The cheap checks (columns, MOS, scenes, splits, paths, the same image twice)
  run on every row before any image is decoded, so a bad MOS in the last of
  100,000 rows is found in about a second.

  Args:
    path: the CSV or JSONL file.
    require_mos: a row without a finite MOS in `mos_range` is an error.
    require_text: a row with an empty `text` is an error.
    check_images: decode every image (catches corrupt and truncated files).
    check_audio: read every audio file's header.
    splits: keep only rows whose `split` is one of these (None: all rows). A
      scene whose rows name two splits is an error either way.
    skip_bad: drop bad rows (also unreadable ones) instead of raising; their
      count and the first reasons are logged. A scene or an image in two
      splits is an error of the whole file, never skipped.
    max_pixels: bound on an image's pixels for `check_images` (None:
      `image_io.MAX_PIXELS`; see `image_io.read_image`).
    split_seed: a manifest without a `split` column is split 8:1:1 by scene
      (`scenes.scene_split` of the scenes compared by `scene_key`) with this
      seed (the config's `seed`); None: such a manifest has no splits.
  """
  entries, columns = manifest_files.read(path)
  if not entries:
    raise ManifestError(f"manifest {path!r} has no rows")
  base = os.path.dirname(os.path.abspath(path))
  required = ["image", "scene"] + (["mos"] if require_mos else [])
  if require_text:
    required.append("text")
  missing = [c for c in required if c not in columns]
  if missing:
    raise ManifestError(
      f"manifest {path!r} lacks the column(s) {missing}; it has {sorted(columns)}"
    )
  rows = [(n, r) for n, r in entries if isinstance(r, dict)]
  assigned = None
  if "split" not in columns and split_seed is not None:
    keys = {scene_key(_field(r, "scene")) for _, r in rows} - {""}
    if keys:
      assigned = scene_split(keys, split_seed)
  split_of = (
    (lambda row: assigned.get(scene_key(_field(row, "scene")), ""))
    if assigned is not None
    else (lambda row: _field(row, "split"))
  )
  if splits is not None and "split" not in columns and assigned is None:
    raise ManifestError(
      f"manifest {path!r} has no `split` column, so no row is in split(s) "
      f"{list(splits)}; add one (bmqa_jax.data.scenes.write_split_manifest or "
      "launch/repeated_splits.py write scene-wise splits)"
    )
  check_scene_splits(rows, path)
  parsed, bad = [], []

  def failed(e):
    if not skip_bad:
      raise ManifestError(str(e)) from None
    bad.append(str(e))

  for number, row in entries:  # the cheap checks, every row
    chosen = not (isinstance(row, dict) and splits is not None and split_of(row) not in splits)
    try:
      if isinstance(row, str):  # unreadable: the reason
        raise ManifestError(row)
      parsed.append(
        (
          _sample(
            row,
            base,
            f"{path}, row {number}",
            number,
            require_mos,
            require_text,
            mos_range,
            split_of(row),
          ),
          chosen,
        )
      )
    except ManifestError as e:
      if chosen:  # rows of other splits count only for the leak checks
        failed(e)
  check_same_images([s for s, _ in parsed], path, duplicates=require_mos)  # every split's
  samples = [s for s, chosen in parsed if chosen]
  if check_images or check_audio:  # then the files
    checked = []
    for sample in samples:
      try:
        _check_files(sample, f"{path}, row {sample.row}", check_images, check_audio, max_pixels)
        checked.append(sample)
      except ManifestError as e:
        failed(e)
    samples = checked
  if bad:
    log(f"skipped {len(bad)} bad row(s) of {path}; first: " + " | ".join(bad[:3]))
  if not samples:
    raise ManifestError(
      f"manifest {path!r} has no usable rows" + (f" in split(s) {list(splits)}" if splits else "")
    )
  return samples


def _sample(row, base, where, number, require_mos, require_text, mos_range, split) -> Sample:
  rel = str(row.get("image") or "").strip()
  if not rel:
    raise ManifestError(f"{where}: empty `image`")
  scene = _field(row, "scene")
  if not scene.strip():
    raise ManifestError(f"{where}: empty `scene`")
  mos = _parse_mos(row.get("mos"), where, require_mos, mos_range)
  text = str(row.get("text") or "").strip()
  if require_text and not text:
    raise ManifestError(f"{where}: empty `text` (a quality description is needed)")
  image = _resolve(base, rel, where, "image")
  audio = str(row.get("audio") or "").strip()
  if audio:
    audio = _resolve(base, audio, where, "audio")
  return Sample(
    image=image,
    mos=mos,
    scene=scene.strip(),
    split=split,
    device=str(row.get("device") or ""),
    text=text,
    audio=audio,
    row=number,
  )


def _check_files(
  sample: Sample, where: str, check_images: bool, check_audio: bool, max_pixels: int | None
) -> None:
  if check_images:
    try:
      image_io.read_image_uint8(sample.image, max_pixels=max_pixels)
    except image_io.ImageReadError as e:
      raise ManifestError(f"{where}: {e}") from None
  if check_audio and sample.audio:
    _check_audio(sample.audio, where)


def _check_audio(path: str, where: str) -> None:
  import soundfile  # pylint: disable=g-import-not-at-top
  from bmqa_jax import audio as audio_lib  # pylint: disable=g-import-not-at-top

  try:
    audio_lib.check_wav(path)  # a truncated WAV: libsndfile reads what is there
  except (audio_lib.AudioReadError, OSError) as e:
    raise ManifestError(f"{where}: {e}") from None
  try:
    info = soundfile.info(path)
  except Exception as e:  # soundfile raises RuntimeError/LibsndfileError
    raise ManifestError(f"{where}: audio file {path!r} is unreadable: {e}") from None
  if info.frames == 0:
    raise ManifestError(f"{where}: audio file {path!r} is empty")


def safe_join(root: str, name: str, where: str = "") -> str:
  """`root/name`, refusing a name (e.g. stored in a dataset) that would write
  outside `root`: absolute, with `..` leading out, or through a symlink."""
  path = os.path.normpath(os.path.join(root, name))
  ok = bool(name) and "\0" not in name and not os.path.isabs(name)
  if ok:
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    ok = real != real_root and os.path.commonpath([real_root, real]) == real_root
  if not ok:
    raise ManifestError(
      f"{where or 'a record'}: file name {name!r} would be written outside {root!r}; refusing it"
    )
  return path


def split_names(samples: Iterable[Sample]) -> list[str]:
  return sorted({s.split for s in samples})


def _scene_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
  """Numbers of train/val/test scenes; each non-zero fraction gets ≥ 1 scene."""
  if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
    raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
  f = np.asarray(fractions, np.float64) / np.sum(fractions)
  n_val = int(round(f[1] * n))
  n_test = int(round(f[2] * n))
  if f[1] > 0:
    n_val = max(n_val, 1)
  if f[2] > 0:
    n_test = max(n_test, 1)
  n_train = n - n_val - n_test
  if n_train < (1 if f[0] > 0 else 0):
    raise ValueError(
      f"{n} scene(s) cannot be split {tuple(fractions)} with at least "
      "one scene in every non-empty split"
    )
  return n_train, n_val, n_test


def scene_split(
  scenes: Iterable[str], seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)
) -> dict[str, str]:
  """{scene: 'train' | 'val' | 'test'}, a random scene-wise split.

  Deterministic in (set of scenes, seed): scenes are sorted before the
  permutation, so the order rows come in does not matter.
  """
  unique = sorted(set(scenes))
  if not unique:
    raise ValueError("no scenes to split")
  n_train, n_val, _ = _scene_counts(len(unique), fractions)
  perm = np.random.default_rng([seed, 0x5C3E]).permutation(len(unique))
  out = {}
  for rank, i in enumerate(perm):
    out[unique[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
  return out
