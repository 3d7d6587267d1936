"""Object categories of the caption pairs, the targets of pretraining strategy CL.

Strategy CL of stage PT (paper Sec. 5.3, Table 2 f) trains each tower to tell
which object categories its sample shows. The category vocabulary of a run
(`for_config`) is:

- MS-COCO (`config.data.pretrain_source='coco'`): its 80 detection categories,
  taken from each image's instance annotations (`bmqa_jax.data.coco`);
- `config.pretrain.categories` when set (a user's caption manifest);
- otherwise, for the built-in data, the names of the things its scenes contain
  (`bmqa_jax.data.builtin.SOURCES`), which its descriptions name verbatim.

For the last two the labels of a pair are the categories its caption names
(`multi_hot`): both towers are trained on the same multi-hot vector.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# The 80 MS-COCO detection categories in the order of their contiguous ids
# (TFDS `coco/2017` and `coco_captions` `objects/label`).
COCO_CATEGORIES = (
  "person",
  "bicycle",
  "car",
  "motorcycle",
  "airplane",
  "bus",
  "train",
  "truck",
  "boat",
  "traffic light",
  "fire hydrant",
  "stop sign",
  "parking meter",
  "bench",
  "bird",
  "cat",
  "dog",
  "horse",
  "sheep",
  "cow",
  "elephant",
  "bear",
  "zebra",
  "giraffe",
  "backpack",
  "umbrella",
  "handbag",
  "tie",
  "suitcase",
  "frisbee",
  "skis",
  "snowboard",
  "sports ball",
  "kite",
  "baseball bat",
  "baseball glove",
  "skateboard",
  "surfboard",
  "tennis racket",
  "bottle",
  "wine glass",
  "cup",
  "fork",
  "knife",
  "spoon",
  "bowl",
  "banana",
  "apple",
  "sandwich",
  "orange",
  "broccoli",
  "carrot",
  "hot dog",
  "pizza",
  "donut",
  "cake",
  "chair",
  "couch",
  "potted plant",
  "bed",
  "dining table",
  "toilet",
  "tv",
  "laptop",
  "mouse",
  "remote",
  "keyboard",
  "cell phone",
  "microwave",
  "oven",
  "toaster",
  "sink",
  "refrigerator",
  "book",
  "clock",
  "vase",
  "scissors",
  "teddy bear",
  "hair drier",
  "toothbrush",
)


def builtin_categories() -> tuple[str, ...]:
  """Every object name of the built-in scenes, sorted."""
  from bmqa_jax.data import builtin  # pylint: disable=g-import-not-at-top

  return tuple(sorted({o.name for src in builtin.SOURCES for o in src.objects}))


def for_config(cfg) -> tuple[str, ...]:
  """The category vocabulary of a run (empty: no labels, CL cannot run)."""
  if cfg.data.get("pretrain_source", "manifest") == "coco":
    return COCO_CATEGORIES
  given = tuple(cfg.get("pretrain", {}).get("categories", ()) or ())
  if given:
    return given
  if cfg.data.kind == "builtin":
    return builtin_categories()
  return ()


def multi_hot(texts: Sequence[str], names: Sequence[str]) -> np.ndarray:
  """float32 [N, len(names)]: 1 where the text names the category.

  Whole words, case-insensitive; longer names are matched first and consume
  their words, so 'night sky' does not also count as 'sky'.
  """
  order = sorted(range(len(names)), key=lambda i: -len(names[i]))
  patterns = [(i, re.compile(r"\b" + re.escape(names[i].lower()) + r"\b")) for i in order]
  out = np.zeros((len(texts), len(names)), np.float32)
  for row, t in enumerate(texts):
    t = t.lower()
    for i, pat in patterns:
      t, n = pat.subn(" ", t)
      out[row, i] = float(n > 0)
  return out
