"""Statistics over repeated runs and metric tables (paper Sec. 5.1.4, Table 3).

:func:`split_statistics` gives mean ± std and median of repeated scene-wise
random splits; :func:`format_table` prints the rows of `bmqa_jax.metrics.summary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def split_statistics(
  results: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
  """Mean ± std and median of metrics over repeated scene-wise random splits.

  Args:
    results: one ``summary``-like dict per split (e.g. 10 splits).
    keys: metrics to aggregate; default: every key whose values are numbers in
      all splits (``n`` included).

  Returns:
    ``{metric: {'mean', 'std', 'median', 'min', 'max', 'n_splits', 'n_failed'}}``;
    ``std`` is the sample standard deviation (ddof=1; ``None`` for one split).
    Splits where a metric is ``None`` (a non-converged logistic fit) are left
    out of that metric's statistics and counted in ``n_failed``.
  """
  if not results:
    raise ValueError("split_statistics: no per-split results given")
  if keys is None:
    keys = [
      k
      for k, v in results[0].items()
      if isinstance(v, (int, float, np.floating, np.integer)) or v is None
    ]
    keys = [
      k
      for k in keys
      if any(isinstance(r.get(k), (int, float, np.floating, np.integer)) for r in results)
    ]
  out: dict[str, dict[str, Any]] = {}
  for k in keys:
    vals = []
    for i, r in enumerate(results):
      if k not in r:
        raise ValueError(f"split_statistics: split {i} has no metric {k!r}")
      if r[k] is not None:
        v = float(r[k])
        if not math.isfinite(v):
          raise ValueError(f"split_statistics: split {i} metric {k!r} is {v}")
        vals.append(v)
    arr = np.asarray(vals)
    out[k] = {
      "mean": float(arr.mean()) if arr.size else None,
      "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
      "median": float(np.median(arr)) if arr.size else None,
      "min": float(arr.min()) if arr.size else None,
      "max": float(arr.max()) if arr.size else None,
      "n_splits": int(arr.size),
      "n_failed": len(results) - int(arr.size),
    }
  return out


def _fmt(value: Any, width: int) -> str:
  if value is None:
    return f"{'n/c':>{width}}"  # logistic fit did not converge
  return f"{value:{width}.4f}"


def format_table(
  rows: Sequence[tuple[str, Mapping[str, Any]]],
  mappings: Sequence[str] = ("logistic4", "logistic5"),
) -> str:
  """A Markdown table of ``summary`` results, one row per (name, summary).

  Columns: n, SRCC, KRCC, raw PLCC and RMSE, and PLCC/RMSE after each mapping
  present in the summaries (``n/c``: the logistic fit did not converge). A row
  holding ``{'n', 'error'}`` (see :func:`grouped_summary`) prints its error.
  """
  present = [m for m in mappings if any(f"plcc_{m}" in r for _, r in rows)]
  heads = ["n", "SRCC", "KRCC", "PLCC", "RMSE"]
  for m in present:
    short = m.replace("logistic", "L")
    heads += [f"PLCC {short}", f"RMSE {short}"]
  name_w = max([len("model")] + [len(str(n)) for n, _ in rows])
  widths = [max(7, len(h)) for h in heads]
  head = [f"{'model':<{name_w}}"] + [f"{h:>{w}}" for h, w in zip(heads, widths)]
  lines = [
    "| " + " | ".join(head) + " |",
    "|" + "|".join(["-" * (name_w + 2)] + ["-" * (w + 2) for w in widths]) + "|",
  ]
  for name, r in rows:
    if "error" in r:
      lines.append(f"| {name:<{name_w}} | {r.get('n', 0):>{widths[0]}} | {r['error']} |")
      continue
    cells = [f"{r['n']:>{widths[0]}}"]
    keys = ["srcc", "krcc", "plcc", "rmse"]
    for m in present:
      keys += [f"plcc_{m}", f"rmse_{m}"]
    cells += [_fmt(r.get(k), w) for k, w in zip(keys, widths[1:])]
    lines.append("| " + " | ".join([f"{name:<{name_w}}"] + cells) + " |")
  return "\n".join(lines)
