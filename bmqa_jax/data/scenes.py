"""Scene-wise random splits (Sec. 5.1.1).

The paper divides MLIQ 8:1:1 *by shooting scene*: the five captures of a scene
are always in the same split, so a model is never tested on a scene it saw in
training. :func:`scene_split` draws one such split from a seed;
:func:`write_split_manifest` writes a copy of a manifest with a fresh `split`
column (`bmqa_jax.experiments.repeated` trains once per seed).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data.manifest import scene_split  # noqa: F401  (public here)
from bmqa_jax.train_lib import workdir as workdir_lib

SPLIT_NAMES = ("train", "val", "test")


def write_split_manifest(
  src: str,
  dst: str,
  seed: int,
  fractions: Sequence[float] = (0.8, 0.1, 0.1),
  assignment: dict[str, str] | None = None,
) -> dict[str, str]:
  """Copies the manifest `src` to `dst` (CSV) with a fresh scene-wise `split`.

  Image and audio paths are rewritten relative to `dst`'s folder so the copy can
  live anywhere. With `assignment` ({scene: split}, e.g. from the MOS manifest)
  that split is applied instead of a new one, and scenes it does not name go to
  'train' (used for the caption-pretraining manifest, so that PT never sees a
  test scene). Returns the {scene: split} applied.
  """
  rows, first = manifest_lib.read_rows(src)
  if not rows:
    raise manifest_lib.ManifestError(f"manifest {src!r} has no rows")
  if "scene" not in rows[0]:
    raise manifest_lib.ManifestError(
      f"manifest {src!r} has no `scene` column; a scene-wise split needs one"
    )
  for i, r in enumerate(rows):
    if not str(r.get("scene") or "").strip():
      raise manifest_lib.ManifestError(f"{src}, row {i + first}: empty `scene`")
  if assignment is None:
    assign = scene_split((str(r["scene"]) for r in rows), seed, fractions)
  else:
    assign = {str(r["scene"]): assignment.get(str(r["scene"]), "train") for r in rows}
  src_dir = os.path.dirname(os.path.abspath(src))
  dst_dir = os.path.dirname(os.path.abspath(dst))
  os.makedirs(dst_dir, exist_ok=True)
  fields = list(rows[0]) + ([] if "split" in rows[0] else ["split"])
  out = []
  for r in rows:
    r = dict(r)
    for col in ("image", "audio"):
      v = str(r.get(col) or "").strip()
      if v and not os.path.isabs(v):
        r[col] = os.path.relpath(os.path.join(src_dir, v), dst_dir)
    r["split"] = assign[str(r["scene"])]
    out.append(r)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields)
  w.writeheader()
  w.writerows(out)
  workdir_lib.atomic_write(dst, buf.getvalue())
  return assign
