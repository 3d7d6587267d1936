"""Reading and validating dataset manifests (DESIGN.md §4).

A manifest is a CSV or JSONL file, one row per sample, with columns
`image` (path relative to the manifest), `mos` (float in [0, 1]), `scene`
(split key), and optional `text`, `audio`, `device`, `split`. Every check runs
before training starts; an error names the manifest row (1-based, counting the
header as row 1 for CSV so it matches what a spreadsheet shows) and the file.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Iterable, Sequence

from bmqa_jax.data import image_io


class ManifestError(ValueError):
  """A manifest row or column that cannot be used, with where it is."""


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


def read_rows(path: str) -> tuple[list[dict], int]:
  """Raw rows of a CSV/JSONL manifest (strings as written) and the number of
  the first data row, for messages."""
  if not os.path.isfile(path):
    raise ManifestError(f"manifest {path!r} does not exist")
  if path.endswith((".jsonl", ".json")):
    rows = []
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ManifestError(f"{path}: line {i} is not valid JSON: {e}") from e
    return rows, 1
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f)), 2


def _parse_mos(value, where: str, require: bool, mos_range) -> float:
  if value is None or (isinstance(value, str) and not value.strip()):
    if require:
      raise ManifestError(f"{where}: no MOS (empty `mos`)")
    return math.nan
  try:
    mos = float(value)
  except ValueError:
    raise ManifestError(f"{where}: MOS {value!r} is not a number") from None
  if not math.isfinite(mos):
    raise ManifestError(f"{where}: MOS is {mos} (not a finite number)")
  lo, hi = mos_range
  if not lo <= mos <= hi:
    raise ManifestError(f"{where}: MOS {mos} is outside [{lo}, {hi}]")
  return mos


def _resolve(base: str, rel: str, where: str, column: str) -> str:
  path = rel if os.path.isabs(rel) else os.path.join(base, rel)
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


def load(path: str, *, require_mos: bool = True, require_text: bool = False,
         check_images: bool = True, check_audio: bool = False,
         splits: Sequence[str] | None = None, skip_bad: bool = False,
         mos_range: tuple[float, float] = (0.0, 1.0),
         log=print) -> list[Sample]:
  """Reads a manifest and checks every row.

  Args:
    path: the CSV or JSONL file.
    require_mos: a row without a finite MOS in `mos_range` is an error.
    require_text: a row with an empty `text` is an error.
    check_images: decode every image (catches corrupt and truncated files).
    check_audio: read every audio file's header.
    splits: keep only rows whose `split` is one of these (None: all rows).
    skip_bad: drop bad rows instead of raising; their count and the first
      reasons are logged.
  """
  rows, first = read_rows(path)
  if not rows:
    raise ManifestError(f"manifest {path!r} has no rows")
  base = os.path.dirname(os.path.abspath(path))
  required = ["image", "scene"] + (["mos"] if require_mos else [])
  if require_text:
    required.append("text")
  missing = [c for c in required if c not in rows[0]]
  if missing:
    raise ManifestError(f"manifest {path!r} lacks the column(s) {missing}; "
                        f"it has {sorted(rows[0])}")
  samples, bad = [], []
  for i, row in enumerate(rows):
    where = f"{path}, row {i + first}"
    if splits is not None and row.get("split", "") not in splits:
      continue
    try:
      samples.append(_sample(row, base, where, i + first, require_mos, require_text,
                             check_images, check_audio, mos_range))
    except (ManifestError, image_io.ImageReadError) as e:
      if not skip_bad:
        raise ManifestError(str(e)) from None
      bad.append(str(e))
  if bad:
    log(f"skipped {len(bad)} bad row(s) of {path}; first: " + " | ".join(bad[:3]))
  if not samples:
    raise ManifestError(f"manifest {path!r} has no usable rows"
                        + (f" in split(s) {list(splits)}" if splits else ""))
  return samples


def _sample(row, base, where, number, require_mos, require_text, check_images,
            check_audio, mos_range) -> Sample:
  rel = str(row.get("image") or "").strip()
  if not rel:
    raise ManifestError(f"{where}: empty `image`")
  image = _resolve(base, rel, where, "image")
  if check_images:
    try:
      image_io.read_image_uint8(image)
    except image_io.ImageReadError as e:
      raise ManifestError(f"{where}: {e}") from None
  mos = _parse_mos(row.get("mos"), where, require_mos, mos_range)
  text = str(row.get("text") or "").strip()
  if require_text and not text:
    raise ManifestError(f"{where}: empty `text` (a quality description is needed)")
  audio = str(row.get("audio") or "").strip()
  if audio:
    audio = _resolve(base, audio, where, "audio")
    if check_audio:
      _check_audio(audio, where)
  return Sample(image=image, mos=mos, scene=str(row["scene"]),
                split=str(row.get("split") or ""), device=str(row.get("device") or ""),
                text=text, audio=audio, row=number)


def _check_audio(path: str, where: str) -> None:
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    info = soundfile.info(path)
  except Exception as e:  # soundfile raises RuntimeError/LibsndfileError
    raise ManifestError(f"{where}: audio file {path!r} is unreadable: {e}") from None
  if info.frames == 0:
    raise ManifestError(f"{where}: audio file {path!r} is empty")


def split_names(samples: Iterable[Sample]) -> list[str]:
  return sorted({s.split for s in samples})
