"""`bmqa-score --out`: the scores file, kept up to date, and what made it.

`--out=scores.csv` (or `.json`) is written as the scores come: a CSV gets one
flushed `path,score,error` row per result, a JSON list is rewritten atomically
after each, so a killed run loses nothing. Beside it, `scores.csv.meta.json`
says what produced the scores: the model (shipped: its name and the digest of
its files; a workdir: its folder, stage, step and config digest), the view,
the description(s), and the score's range and direction.

The same command again resumes: files with a finite score are kept and not
scored again; failed ones (a non-finite score is a failure) are tried again.
Another model, view or description refuses to continue the file, and a file
that bmqa-score did not write (no `.meta.json` beside it) is never replaced;
`overwrite=True` starts it again in both cases.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from bmqa_jax.bmqa import scoring
from bmqa_jax.train_lib import workdir as workdir_lib

META_SUFFIX = ".meta.json"
FORMATS = (".csv", ".json")
COLUMNS = ["path", "score", "error"]
# What must match for a file to be continued (the version of bmqa_jax may differ).
_SAME = ("model", "view", "tile_short_side", "text", "descriptions")


class OutFileError(ValueError):
  """An `--out` file that cannot be written or continued; the message says why."""


def describe(identity: dict) -> str:
  """One line naming the model, view and text of an identity."""
  m = identity.get("model", {})
  model = (
    f"workdir {m['workdir']} ({m.get('stage')} step {m.get('step')})"
    if "workdir" in m
    else f"shipped model {m.get('name')} (sha256 {str(m.get('sha256'))[:12]})"
  )
  text = identity.get("descriptions") or identity.get("text")
  return f"{model}, view {identity.get('view')!r}" + (f", text {text!r}" if text else "")


class ResultLog:
  """The `--out` file of one scoring run (see the module's docstring)."""

  def __init__(self, path: str, identity: dict, overwrite: bool = False):
    self.path, self.meta = path, path + META_SUFFIX
    self.json = path.lower().endswith(".json")
    _check_path(path)
    old: list[scoring.Result] = []
    if os.path.exists(path) and not overwrite and os.path.getsize(path):
      stored = _read_meta(self.meta, path)
      changed = [k for k in _SAME if stored.get(k) != identity.get(k)]
      if changed:
        raise OutFileError(
          f"--out={path} holds the scores of another run ({', '.join(changed)} "
          f"differ): {describe(stored)}; this run: {describe(identity)}. Name "
          "another --out, or pass --overwrite to start it again"
        )
      old = _read_results(path, self.json)
    self.results = [r for r in old if r.score is not None and math.isfinite(r.score)]
    self.done = {r.path for r in self.results}
    self._rewrite()  # the results first: a stale .meta.json never vouches for them
    workdir_lib.atomic_write(
      self.meta,
      json.dumps(dict(identity, written_by="bmqa-score"), indent=1, sort_keys=True) + "\n",
    )
    self._file = None if self.json else open(path, "a", newline="", encoding="utf-8")
    self._csv = None if self.json else csv.writer(self._file)

  def _rewrite(self) -> None:
    if self.json:
      text = json.dumps([dataclasses.asdict(r) for r in self.results], indent=1)
    else:
      text = ",".join(COLUMNS) + "\r\n" + "".join(_csv_line(r) for r in self.results)
    workdir_lib.atomic_write(self.path, text)

  def add(self, r: scoring.Result) -> None:
    self.results.append(r)
    if self.json:
      self._rewrite()
    else:
      self._csv.writerow(_row(r))
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()


def _check_path(path: str) -> None:
  if os.path.isdir(path):
    raise OutFileError(f"--out={path} is a folder; name a .csv or .json file")
  if not path.lower().endswith(FORMATS):
    raise OutFileError(f"--out={path}: name a .csv or .json file")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise OutFileError(f"--out={path}: folder {folder} does not exist")


def _read_meta(meta: str, path: str) -> dict:
  if not os.path.exists(meta):
    raise OutFileError(
      f"--out={path} exists and was not written by bmqa-score (no {os.path.basename(meta)} "
      "beside it); name another file, or pass --overwrite to replace it"
    )
  try:
    with open(meta, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise OutFileError(
      f"{meta}: unreadable ({e}); pass --overwrite to start {path} again"
    ) from None
  if not isinstance(stored, dict):
    raise OutFileError(f"{meta} is not a bmqa-score record; pass --overwrite to start {path} again")
  return stored


def _read_results(path: str, is_json: bool) -> list[scoring.Result]:
  bad = OutFileError(
    f"--out={path} is not a bmqa-score {'JSON' if is_json else 'CSV'} "
    "file (a list of path, score, error); name another file, or "
    "pass --overwrite to replace it"
  )
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = json.load(f) if is_json else list(csv.DictReader(f))
  except (OSError, ValueError, csv.Error):
    raise bad from None
  if not is_json and rows and list(rows[0]) != COLUMNS:
    raise bad
  if not isinstance(rows, list) or any(not isinstance(r, dict) or "path" not in r for r in rows):
    raise bad
  return [
    scoring.Result(str(r["path"]), _score(r.get("score")), str(r.get("error") or "")) for r in rows
  ]


def _score(value) -> float | None:
  try:
    return None if value in (None, "") else float(value)
  except (TypeError, ValueError):
    return None


def _row(r: scoring.Result) -> list:
  return [r.path, "" if r.score is None else f"{r.score:.5f}", r.error]


def _csv_line(r: scoring.Result) -> str:
  buf = io.StringIO()
  csv.writer(buf).writerow(_row(r))
  return buf.getvalue()
