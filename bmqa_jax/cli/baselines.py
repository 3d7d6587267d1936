r"""Scores a manifest with the reference baselines and prints the IQA table.

  bmqa-baselines --manifest=../shared/data/biq2021_lowlight/manifest.csv \
      --split=val [--baselines=luminance,brisque,niqe] [--json=OUT.json]
  bmqa-baselines --repeated=runs/biq_rs   # every split of bmqa-repeated-splits,
                                          # beside BMQA's own results

Baselines: luminance, brisque (SVR fitted on --train_split), brisque_live
(pretrained LIVE SVR: --brisque_model/--brisque_ranges or an installed
package's), niqe (--niqe_pristine=auto|live|skimage|FILE|FOLDER).
"""

import json

from absl import app
from absl import flags

from bmqa_jax.baselines import harness

_MANIFEST = flags.DEFINE_string("manifest", None, "CSV/JSONL manifest (README).")
_REPEATED = flags.DEFINE_string(
  "repeated",
  None,
  "A launch/repeated_splits.py workdir: score the test split of each of its splits.",
)
_SPLIT = flags.DEFINE_string("split", "test", "Split to score.")
_TRAIN_SPLIT = flags.DEFINE_string("train_split", "train", "Split to fit BRISQUE's SVR on.")
_BASELINES = flags.DEFINE_list(
  "baselines", list(harness.DEFAULT_KEYS), f"Any of {list(harness.KEYS)}."
)
_NIQE_PRISTINE = flags.DEFINE_string(
  "niqe_pristine", "auto", "auto | live | skimage | a .mat/.npz file | a folder."
)
_BRISQUE_MODEL = flags.DEFINE_string("brisque_model", None, "LIBSVM model for brisque_live.")
_BRISQUE_RANGES = flags.DEFINE_string(
  "brisque_ranges",
  None,
  "Feature ranges for it: an svm-scale range file, JSON "
  '{"min": [...], "max": [...]} or .npz (min/max); pickles are refused.',
)
_JSON = flags.DEFINE_string("json", None, "Also write the results here as JSON.")


def main(argv):
  del argv
  cfg = harness.HarnessConfig(
    split=_SPLIT.value,
    train_split=_TRAIN_SPLIT.value,
    baselines=tuple(_BASELINES.value),
    niqe_pristine=_NIQE_PRISTINE.value,
    brisque_model=_BRISQUE_MODEL.value,
    brisque_ranges=_BRISQUE_RANGES.value,
  )
  if _REPEATED.value:
    result = harness.evaluate_repeated(_REPEATED.value, cfg)
    print(harness.format_repeated(result))
  elif _MANIFEST.value:
    result = harness.evaluate_manifest(_MANIFEST.value, cfg)
    print(harness.format_result(result))
  else:
    raise app.UsageError("give --manifest or --repeated")
  if _JSON.value:
    with open(_JSON.value, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=1, default=float)
