r"""Captions image files with a trained captioner (paper Eq. 16, Fig. 11).

  bmqa-caption --workdir=runs/captioner photo.jpg folder/ 'shots/*.png'
  bmqa-caption --workdir=runs/captioner --out=captions.csv \
      --attention_dir=attention dark/*.jpg

Prints one caption per image. ``--out`` writes a .csv (columns ``image,text``:
usable as ``bmqa-score --descriptions``) or .json; ``--attention_dir``
writes, per image, a PNG per generated word (the image with that word's
upsampled attention map overlaid) and a grid of all words. Files that cannot
be read are reported by name; the others are still captioned.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from bmqa_jax.captioner import infer
from bmqa_jax.data import image_io
from bmqa_jax.data import photo_inputs
from bmqa_jax.train_lib import workdir as workdir_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A captioner workdir (launch/train_captioner.py).")
_OUT = flags.DEFINE_string("out", "", "Also write the captions to a .csv or .json.")
_ATTENTION_DIR = flags.DEFINE_string("attention_dir", "", "Write attention-map PNGs here.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Default: the captioner config's.")
flags.mark_flag_as_required("workdir")


def main(argv):
  logging.set_verbosity(logging.WARNING)
  if len(argv) < 2:
    raise app.UsageError("give image files, folders or glob patterns")
  paths, failed = [], []
  for p, why in photo_inputs.expand(argv[1:]):
    if why:
      failed.append((p, why))
      continue
    try:
      image_io.read_image_uint8(p)
      paths.append(p)
    except (image_io.ImageReadError, OSError) as e:
      failed.append((p, str(e)))
  loaded = infer.load_captioner(_WORKDIR.value)
  results = infer.caption_paths(_WORKDIR.value, paths, _BEAM.value, loaded=loaded) if paths else []
  for r in results:
    print(f"{r['path']}\t{r['caption']}")
    if _ATTENTION_DIR.value:
      infer.save_attention_maps(r, _ATTENTION_DIR.value, loaded[0])
  for p, e in failed:
    print(f"FAILED\t{p}\t{e}")
  if _OUT.value:
    rows = [
      dict(image=os.path.abspath(r["path"]), text=r["caption"], error="") for r in results
    ] + [dict(image=os.path.abspath(p), text="", error=e) for p, e in failed]
    if _OUT.value.endswith(".json"):
      workdir_lib.atomic_write(_OUT.value, json.dumps(rows, indent=1))
    else:
      workdir_lib.atomic_write_csv(
        _OUT.value,
        [["image", "text", "error"]] + [[r["image"], r["text"], r["error"]] for r in rows],
      )
  if failed:
    print(
      f"{len(failed)} of {len(failed) + len(results)} file(s) could not be captioned",
      file=sys.stderr,
    )
