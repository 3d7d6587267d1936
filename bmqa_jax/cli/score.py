r"""Prints a quality score per photo: the predicted mean opinion score, in [0, 1],
higher is better.

  bmqa-score photo.jpg folder/ 'shots/**/*.png'   # the model shipped in the package
  bmqa-score --workdir=runs/biq_lite0 photo.jpg   # your own run
  bmqa-score --workdir=runs/quickstart --text="a dim street, noisy" a.jpg
  bmqa-score --out=scores.csv big_folder/         # resumable
  python launch/score.py photo.jpg                # the same, from a clone

Without --workdir the model shipped in the package scores (real dark photos,
see bmqa_jax/bmqa/assets/biq2021_lite0/MODEL_CARD.md). Each photo is read in
the view its model was trained for (bmqa_jax.create_metric is the same scorer
in Python). Folders are read recursively; globs and folders never follow links
to folders; each file is scored once. A file that cannot be scored, a pattern
that matches nothing or a folder without photos is reported by name, the
others are still scored, and the exit status is 1 when any failed (2 for a
mistake in the command). --out (.csv or .json) is written as the scores come,
with OUT.meta.json beside it naming the model, view and text; the same command
again skips the files it holds, and another model, view or text is refused
unless --overwrite.
"""

import hashlib
import os
import sys

from absl import app
from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.bmqa import score_log
from bmqa_jax.bmqa import scoring

_WORKDIR = flags.DEFINE_string(
  "workdir", "", "A training workdir (default: the model shipped in the package)."
)
_TEXT = flags.DEFINE_string(
  "text", "", "One quality description for every image (models trained with descriptions need one)."
)
_DESCRIPTIONS = flags.DEFINE_string("descriptions", "", "CSV with image,text columns.")
_VIEW = flags.DEFINE_enum(
  "view",
  "auto",
  list(scoring.VIEWS),
  "'auto': the "
  "view the model was trained for; 'tiles' (resize models): "
  "mean over a grid of crops of the resized image.",
)
_TILE_SHORT_SIDE = flags.DEFINE_integer(
  "tile_short_side", 512, "With --view=tiles, the image is resized to this short side."
)
_OUT = flags.DEFINE_string("out", "", "Also write the scores to a .csv or .json.")
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Start --out again (another model, view or text; a file bmqa-score did not write).",
)
runtime.define_flags(cluster=False)


def main(argv):
  logging.set_verbosity(logging.WARNING)
  runtime.start()
  if len(argv) < 2:
    raise app.UsageError("give image files, folders or glob patterns")
  metric = scoring.create_metric(
    _WORKDIR.value or None,
    view=_VIEW.value,
    text=_TEXT.value or None,
    tile_short_side=_TILE_SHORT_SIDE.value,
    compilation_cache="",
  )  # runtime.start() set it from --compilation_cache
  print(f"scoring with {_describe(metric)}", file=sys.stderr)
  identity = metric.identity()
  texts = None
  if not metric.needs_text and (_TEXT.value or _DESCRIPTIONS.value):
    print(
      "note: this model reads no description; --text and --descriptions are not used",
      file=sys.stderr,
    )
  elif _DESCRIPTIONS.value:
    texts = scoring.read_descriptions(_DESCRIPTIONS.value)
    with open(_DESCRIPTIONS.value, "rb") as f:
      identity["descriptions"] = dict(
        path=os.path.abspath(_DESCRIPTIONS.value), sha256=hashlib.sha256(f.read()).hexdigest()
      )
  out = score_log.ResultLog(_OUT.value, identity, _OVERWRITE.value) if _OUT.value else None
  failed = total = 0
  try:
    for r in metric.iter_files(argv[1:], texts=texts, skip=out.done if out else ()):
      print(
        f"{r.score:.4f}\t{r.path}" if r.score is not None else f"FAILED\t{r.path}\t{r.error}",
        flush=True,
      )
      total += 1
      failed += r.score is None
      if out:
        out.add(r)
  finally:
    if out:
      out.close()
  if failed:
    print(f"{failed} of {total} file(s) could not be scored", file=sys.stderr)
    sys.exit(1)


def _describe(metric) -> str:
  if _WORKDIR.value:
    m = metric.identity()["model"]
    return f"the run in {_WORKDIR.value} ({m['stage']} step {m['step']})"
  return (
    f"the shipped model ({metric.name}: bmqa_jax/bmqa/assets/{metric.name}; "
    "--workdir=DIR for your own run); scores in [0, 1], higher is better"
  )
