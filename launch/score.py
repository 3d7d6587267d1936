r"""Prints a quality score (MOS scale, higher is better) per image file.

  python launch/score.py --workdir=runs/biq_scratch photo.jpg folder/ 'shots/*.png'
  python launch/score.py --workdir=runs/quickstart --text="a dim street, noisy" a.jpg
  python launch/score.py --workdir=W --view=tiles --out=scores.csv big_photo.jpg

Files that cannot be read are reported by name; the others are still scored.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from bmqa_jax import scoring

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.")
_TEXT = flags.DEFINE_string("text", "", "One quality description for every image "
                            "(models trained with descriptions need one).")
_DESCRIPTIONS = flags.DEFINE_string("descriptions", "", "CSV with image,text columns.")
_VIEW = flags.DEFINE_enum("view", "center", ["center", "tiles"], "'center': the "
                          "evaluation crop; 'tiles': mean over a grid of crops.")
_TILE_SHORT_SIDE = flags.DEFINE_integer("tile_short_side", 512, "With --view=tiles, "
                                        "the image is resized to this short side.")
_OUT = flags.DEFINE_string("out", "", "Also write the scores to a .csv or .json.")
flags.mark_flag_as_required("workdir")


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) < 2:
    raise app.UsageError("give image files, folders or glob patterns")
  texts = scoring.read_descriptions(_DESCRIPTIONS.value) if _DESCRIPTIONS.value else None
  results = scoring.score_files(_WORKDIR.value, argv[1:], texts=texts,
                                default_text=_TEXT.value, view=_VIEW.value,
                                tile_short_side=_TILE_SHORT_SIDE.value)
  for r in results:
    print(f"{r.score:.4f}\t{r.path}" if r.score is not None else
          f"FAILED\t{r.path}\t{r.error}")
  if _OUT.value:
    scoring.write(results, _OUT.value)
  failed = sum(r.score is None for r in results)
  if failed:
    print(f"{failed} of {len(results)} file(s) could not be scored", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
