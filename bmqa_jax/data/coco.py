"""MS-COCO caption pairs for stage PT (paper Sec. 5.1.3), from a prepared TFDS copy.

The paper pretrains both towers on MS-COCO. This module reads a TFDS
`coco_captions` dataset the user has already prepared (`tfds build
coco_captions --data_dir=DIR --file_format=array_record`; nothing is ever
downloaded here) through `tfds.builder(..., data_dir=DIR).as_data_source`,
which gives random access to its examples. Every (image, caption) pair is one
sample (about five per image); its category labels are the 80-way multi-hot of
the image's instance annotations (`objects/label`), the targets of strategy CL
(`bmqa_jax.data.categories`). `coco_captions` holds COCO 2014 with the
Karpathy–Li splits (`train`, `restval`, `val`, `test`); `coco/2017` has no
captions and cannot serve as caption pairs.

Used when `config.data.pretrain_source='coco'` with `config.data.coco_dir` (the
TFDS data_dir) and `config.data.coco_split`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import io
from typing import Any, Sequence

import numpy as np
from PIL import Image

from bmqa_jax import log as log_lib
from bmqa_jax.data import categories
from bmqa_jax.data.manifest import Sample

BUILDER = "coco_captions"


@dataclasses.dataclass
class CocoPairs:
  """Caption pairs of one split: `samples[i]` shows example `source_index[i]`."""

  samples: list[Sample]  # text = the caption, scene = the COCO image id
  source_index: np.ndarray  # int64 [N]
  labels: np.ndarray  # float32 [N, 80]
  source: Sequence[Any]  # the TFDS data source (decodes an example on access)


def _builder(coco_dir: str):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not coco_dir:
    raise ValueError(
      "config.data.pretrain_source='coco' needs config.data.coco_dir, "
      f"the TFDS data_dir that holds a prepared {BUILDER}/"
    )
  return tfds.builder(BUILDER, data_dir=coco_dir)


def load(coco_dir: str, split: str = "train", log=log_lib.info) -> CocoPairs:
  """Caption pairs of `split` of the prepared `coco_captions` under `coco_dir`."""
  builder = _builder(coco_dir)
  num_classes = builder.info.features["objects"]["label"].num_classes
  if num_classes != len(categories.COCO_CATEGORIES):
    raise ValueError(
      f"{BUILDER} in {coco_dir} has {num_classes} object classes, "
      f"expected {len(categories.COCO_CATEGORIES)}"
    )
  try:
    source = builder.as_data_source(split=split)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
      f"cannot read {BUILDER} split {split!r} from {coco_dir} ({type(e).__name__}: "
      f"{e}). It must be prepared there beforehand in the ArrayRecord format "
      f"(tfds build {BUILDER} --data_dir={coco_dir} --file_format=array_record, "
      "or `tfds convert_format` of an existing TFRecord copy); nothing is "
      "downloaded at run time"
    ) from e
  samples, index, labels = [], [], []
  for i in range(len(source)):
    ex = source[i]
    hot = np.zeros(num_classes, np.float32)
    hot[np.asarray(ex["objects"]["label"], np.int64)] = 1.0
    image_id = str(int(np.asarray(ex["image/id"])))
    for text in np.asarray(ex["captions"]["text"]).reshape(-1):
      text = text.decode() if isinstance(text, bytes) else str(text)
      if not text.strip():
        continue
      samples.append(
        Sample(image="", mos=float("nan"), scene=image_id, split=split, text=text.strip(), row=i)
      )
      index.append(i)
      labels.append(hot)
  if not samples:
    raise ValueError(f"{BUILDER} split {split!r} in {coco_dir} holds no captions")
  log(f"{BUILDER}/{split}: {len(samples)} caption pairs of {len(source)} images")
  return CocoPairs(
    samples=samples,
    source_index=np.asarray(index, np.int64),
    labels=np.stack(labels),
    source=source,
  )


def image_uint8(value) -> np.ndarray:
  """An example's `image` (decoded array, or encoded bytes) as uint8 RGB [H, W, 3]."""
  if isinstance(value, (bytes, np.bytes_)):
    with Image.open(io.BytesIO(value)) as img:
      return np.asarray(img.convert("RGB"))
  arr = np.asarray(value, np.uint8)
  if arr.ndim == 2 or arr.shape[-1] == 1:
    arr = np.repeat(arr.reshape(arr.shape[0], arr.shape[1], 1), 3, axis=-1)
  return arr


class CocoRecords(collections.abc.Sequence):
  """Pipeline records of caption pairs whose image is read from the data source.

  `records` are `pipeline.to_records` of `CocoPairs.samples` (tokenised text);
  item i adds `image_u8` (decoded on access) and the CL `labels`.
  """

  def __init__(self, records: list[dict], pairs: CocoPairs):
    if len(records) != len(pairs.samples):
      raise ValueError("records and caption pairs differ in length")
    self._records, self._pairs = records, pairs

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i):
    r = {k: v for k, v in self._records[i].items() if k != "path"}
    ex = self._pairs.source[int(self._pairs.source_index[i])]
    r["image_u8"] = image_uint8(ex["image"])
    r["labels"] = self._pairs.labels[i]
    return r
