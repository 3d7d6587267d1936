r"""Prints a quality score (MOS scale, higher is better) per image file.

  python launch/score.py photo.jpg folder/ 'shots/*.png'     # the shipped model
  python launch/score.py --workdir=runs/biq_lite0 photo.jpg  # your own run
  python launch/score.py --workdir=runs/quickstart --text="a dim street, noisy" a.jpg
  python launch/score.py --out=scores.csv big_folder/        # resumable

Without --workdir the model shipped in the package scores (real dark photos,
see bmqa_jax/bmqa/assets/biq2021_lite0/MODEL_CARD.md). Each image is read in the
view its model was trained for. Files that cannot be read are reported by name,
the others are still scored, and the exit status is 1 when any failed. --out
is written as the scores come; running the same command again skips the files
it already holds.
"""

from bmqa_jax import huge_pages

if __name__ == "__main__":  # before JAX starts: glibc reads its tunables at exec
  huge_pages.restart()

import sys

from absl import app
from absl import flags
from absl import logging

from bmqa_jax import runtime
from bmqa_jax.bmqa import scoring

_WORKDIR = flags.DEFINE_string("workdir", "", "A training workdir (default: the "
                               "model shipped in the package).")
_TEXT = flags.DEFINE_string("text", "", "One quality description for every image "
                            "(models trained with descriptions need one).")
_DESCRIPTIONS = flags.DEFINE_string("descriptions", "", "CSV with image,text columns.")
_VIEW = flags.DEFINE_enum("view", "auto", ["auto", "center", "tiles"], "'auto': the "
                          "view the model was trained for; 'tiles' (resize models): "
                          "mean over a grid of crops of the resized image.")
_TILE_SHORT_SIDE = flags.DEFINE_integer("tile_short_side", 512, "With --view=tiles, "
                                        "the image is resized to this short side.")
_OUT = flags.DEFINE_string("out", "", "Also write the scores to a .csv or .json.")
runtime.define_flags(cluster=False, onednn=False)  # keep its programs cacheable


def main(argv):
  logging.set_verbosity(logging.WARNING)
  runtime.start()
  if len(argv) < 2:
    raise app.UsageError("give image files, folders or glob patterns")
  if not _WORKDIR.value:
    print("scoring with the shipped model (bmqa_jax/bmqa/assets/biq2021_lite0; "
          "--workdir=DIR for your own run)", file=sys.stderr)
  texts = scoring.read_descriptions(_DESCRIPTIONS.value) if _DESCRIPTIONS.value else None
  out = scoring.ResultLog(_OUT.value) if _OUT.value else None
  failed = total = 0
  try:
    for r in scoring.iter_scores(_WORKDIR.value, argv[1:], texts=texts,
                                 default_text=_TEXT.value, view=_VIEW.value,
                                 tile_short_side=_TILE_SHORT_SIDE.value,
                                 skip=out.done if out else ()):
      print(f"{r.score:.4f}\t{r.path}" if r.score is not None else
            f"FAILED\t{r.path}\t{r.error}", flush=True)
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


if __name__ == "__main__":
  app.run(main)
