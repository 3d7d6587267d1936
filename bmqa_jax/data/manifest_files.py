"""Reading a manifest's rows: CSV or JSONL, UTF-8, each row as written.

`bmqa_jax.data.manifest` checks and parses the rows; this module only turns a
file into (row number, row) pairs and names the row of anything unreadable: a
byte that is not UTF-8, a field over `MAX_FIELD` characters, a column named
twice, a JSONL line that is not an object.
"""

from __future__ import annotations

import csv
import io
import json
import os


class ManifestError(ValueError):
  """A manifest row or column that cannot be used, with where it is."""


MAX_FIELD = 131_072  # characters in one field (the csv module's default limit)


def _decode(path: str) -> str:
  """The file as text: UTF-8, with or without the BOM spreadsheets write."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = raw[: e.start].count(b"\n") + 1
    raise ManifestError(
      f"{path}, line {line}: byte {raw[e.start]:#04x} is not UTF-8; save the "
      "manifest as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet)"
    ) from None


def _read_csv(path: str, text: str) -> tuple[list[tuple[int, dict | str]], list[str]]:
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = next(reader, [])
  except csv.Error as e:
    raise ManifestError(f"{path}, row 1: unreadable CSV header ({e})") from None
  names = [c.strip() for c in header]
  for i, c in enumerate(names):
    if c and c in names[:i]:  # csv.DictReader would silently keep the last
      raise ManifestError(
        f"{path}, row 1: column {c!r} appears twice (columns "
        f"{names.index(c) + 1} and {i + 1}); keep one"
      )
  entries, number = [], 1
  while True:
    number += 1  # the header is row 1, as a spreadsheet shows it
    where = f"{path}, row {number}"
    try:
      values = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      entries.append((number, f"{where}: unreadable CSV ({e})"))
      continue
    if not values:  # a blank line
      continue
    long = [c for c, v in zip(header + ["?"] * len(values), values) if len(v) > MAX_FIELD]
    if long:
      entries.append((number, f"{where}: field {long[0]!r} is longer than {MAX_FIELD} characters"))
    elif len(values) > len(header) and any(v.strip() for v in values[len(header) :]):
      entries.append((number, f"{where}: {len(values)} fields, but the header has {len(header)}"))
    else:
      entries.append((number, dict(zip(header, values + [""] * len(header)))))
  return entries, header


class _DuplicateKey(Exception):
  pass


def _no_duplicate_keys(pairs):
  out = {}
  for k, v in pairs:
    if k in out:  # json.loads would silently keep the last
      raise _DuplicateKey(k)
    out[k] = v
  return out


def _read_jsonl(path: str, text: str) -> tuple[list[tuple[int, dict | str]], list[str]]:
  if text.lstrip().startswith("["):
    try:
      whole = json.loads(text)
    except (ValueError, RecursionError):
      whole = None
    if isinstance(whole, list):
      raise ManifestError(
        f"{path}, row 1: the file is one JSON array; a manifest is JSON Lines, one object per line"
      )
  entries = []
  for number, line in enumerate(text.split("\n"), 1):  # JSONL: row = line
    if not line.strip():
      continue
    where = f"{path}, row {number}"
    try:
      row = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
      entries.append((number, f"{where}: key {e.args[0]!r} appears twice; keep one"))
      continue
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
      entries.append((number, f"{where}: not valid JSON ({e})"))
      continue
    if not isinstance(row, dict):
      entries.append(
        (number, f"{where}: a JSON {type(row).__name__}, not an object with the columns as keys")
      )
      continue
    bad = [k for k, v in row.items() if not isinstance(v, (str, int, float, type(None)))]
    long = [k for k, v in row.items() if isinstance(v, str) and len(v) > MAX_FIELD]
    if bad:
      entries.append(
        (
          number,
          f"{where}: field {bad[0]!r} is a {type(row[bad[0]]).__name__}, not a string or number",
        )
      )
    elif long:
      entries.append((number, f"{where}: field {long[0]!r} is longer than {MAX_FIELD} characters"))
    else:
      entries.append((number, row))
  first = next((r for _, r in entries if isinstance(r, dict)), {})
  return entries, list(first)


def read(path: str) -> tuple[list[tuple[int, dict | str]], list[str]]:
  """(row number, row or why it is unusable) for each row, and the column names
  (the CSV header; the keys of the first good JSONL row)."""
  if not os.path.isfile(path):
    raise ManifestError(f"manifest {path!r} does not exist")
  text = _decode(path)
  if path.endswith((".jsonl", ".json")):
    return _read_jsonl(path, text)
  return _read_csv(path, text)


def read_rows(path: str) -> tuple[list[dict], int]:
  """Raw rows of a CSV/JSONL manifest (strings as written) and the number of
  the first data row, for messages. The first unreadable row raises."""
  entries, _ = read(path)
  for _, row in entries:
    if isinstance(row, str):
      raise ManifestError(row)
  return [row for _, row in entries], 2 if not path.endswith((".jsonl", ".json")) else 1
