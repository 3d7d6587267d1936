r"""Rebuilds the model shipped in the package (bmqa_jax/bmqa/assets/biq2021_lite0).

  bmqa-build-shipped-model --workdir=runs/shipped

Trains configs/biq2021.py (image-only BMQA, frozen ImageNet Lite0, native
scale, its default recipe: heads on scale 1 and a kernel ridge probe on scales
1, ½ and ¼) on ../shared/data/biq2021_lowlight with the given seed, evaluates the
validation split, and writes the weights after the tower, the config, the
model card with the validation figures of the shipped files themselves, and
the scores of scikit-image's darkened photos (the regression reference of
tests/test_shipped.py), and last SHA256SUMS, the digests of every file that
loading verifies. Training on a CPU is deterministic: the
same seed gives the same files, bit for bit.
"""

import json
import os
import tempfile

import numpy as np

from absl import flags
from absl import logging

from bmqa_jax.bmqa import evaluate
from bmqa_jax import metrics
from bmqa_jax.bmqa import scoring
from bmqa_jax.bmqa import shipped
from bmqa_jax.bmqa import train
from bmqa_jax.cli import config_flag
from bmqa_jax.data import manifest

_CONFIG = config_flag.DEFINE_config(
  "config",
  "biq2021",
  "The recipe (a config name or file; default: the shipped files' recipe).",
)
_WORKDIR = flags.DEFINE_string("workdir", "runs/shipped", "Training workdir.")
_OUT = flags.DEFINE_string("out", shipped.ASSET_DIR, "Where the shipped files go.")


def _score(paths, out):
  return [r.score for r in scoring.iter_scores("", paths, progress=False, asset_dir=out)]


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  train.train_and_evaluate(cfg, _WORKDIR.value, progress=True)
  variables = evaluate.load_final_variables(_WORKDIR.value, cfg)
  shipped.export(cfg, variables, _OUT.value, card="")
  samples = manifest.load(cfg.data.manifest, splits=[cfg.data.test_split], check_images=False)
  val = metrics.summary(
    np.array(_score([s.image for s in samples], _OUT.value)), np.array([s.mos for s in samples])
  )  # the shipped files' own
  shipped.export(
    cfg, variables, _OUT.value, shipped.model_card(cfg, val, cfg.data.manifest, cfg.seed)
  )
  with tempfile.TemporaryDirectory() as tmp:
    paths = shipped.reference_photos(tmp)
    scores = dict(zip([os.path.basename(p) for p in paths], _score(paths, _OUT.value)))
  with open(os.path.join(_OUT.value, "reference.json"), "w") as f:
    json.dump(
      dict(val={k: v for k, v in val.items() if isinstance(v, float)}, photos=scores),
      f,
      indent=1,
      sort_keys=True,
    )
    f.write("\n")
  shipped.write_digests(_OUT.value)  # every file, reference.json included
  print(f"wrote {_OUT.value}: val SRCC {val['srcc']:.4f}, PLCC {val['plcc']:.4f}")
