"""Grain input pipelines: decode, augment, tokenise, batch.

Two input modes (`config.input.mode`):

* `'resize'` (default): training takes a random resized crop and a horizontal
  flip; evaluation resizes the short side and takes the centre crop.
* `'native'` (`bmqa_jax.data.native`): the camera's pixels, never resampled;
  training takes a random `native_crop` window and a flip, evaluation a fixed
  `eval_grid` of windows (`image` is then [B, K, crop, crop, 3] and the model's
  scores are averaged over the K views).

Images come decoded from the prepared store of the split when the records
carry one (`bmqa_jax.data.prepared`, `config.input.store`: each image decoded
once into uint8 and kept in an ArrayRecord file), else each sample's file is
decoded again in every epoch (the JPEG path); decoded caption pairs from TFDS
come as `image_u8`. Augmentation runs on the uint8 image either way, in the
grain workers (`config.input.workers`).

Both normalise with the ImageNet mean/std (the contract of
`bmqa_jax.models.image`). Texts are tokenised once, up front, with the run's
sentencepiece model. Batches are per process (the global batch divided by the
number of JAX processes): each process reads only its rows of every global
batch (`train_loader`), and `bmqa_jax.sharding` places them on the devices.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import grain
import jax
import numpy as np
from PIL import Image

from bmqa_jax.data import image_io
from bmqa_jax.data import native
from bmqa_jax.data.manifest import Sample
from bmqa_jax.data.tokenizer import Tokenizer

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """A run's `config.input` as typed, hashable settings: the fields, their
  defaults and their meaning are bmqa_jax/defaults.py's `input_config`."""

  image_size: int
  resize_size: int
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  flip: bool
  max_text_len: int
  mode: str
  native_crop: int
  eval_grid: tuple[int, int]
  workers: int
  prefetch: int
  max_pixels: int
  store: str
  prepared_max_gb: float
  prepare_short_side: int
  prepared_dir: str


def from_config(cfg) -> PipelineConfig:
  """The pipeline settings of a run's `config.input` (an old config.json is
  completed with today's defaults when it is read, `config_bases.complete`)."""
  c = cfg.input
  tuples = ("crop_scale", "crop_ratio", "eval_grid")
  return PipelineConfig(
    **{
      f.name: tuple(c[f.name]) if f.name in tuples else c[f.name]
      for f in dataclasses.fields(PipelineConfig)
    }
  )


def to_records(
  samples: Sequence[Sample],
  tokenizer: Tokenizer | None,
  max_text_len: int,
  devices: Sequence[str] = (),
) -> list[dict]:
  """Flat, picklable records; texts are tokenised here, once."""
  if tokenizer is not None:
    ids, mask = tokenizer.encode([s.text for s in samples], max_text_len)
  dev_index = {d: i for i, d in enumerate(devices)}
  records = []
  for i, s in enumerate(samples):
    r = dict(
      path=s.image,
      mos=np.float32(s.mos),
      index=np.int32(i),
      device=np.int32(dev_index.get(s.device, -1)),
    )
    if tokenizer is not None:
      r["text_ids"] = ids[i]
      r["text_mask"] = mask[i]
    records.append(r)
  return records


def working_size(
  height: int, width: int, cfg: PipelineConfig, short_side: int = 0
) -> tuple[int, int]:
  """(height, width) of the largest array the views of an image allocate: the
  image mirror-padded to the window ('native'), or resized so that its short
  side is `resize_size` ('resize'; `short_side` > 0: that side instead, the
  scorer's tiles). Padding and resizing grow an image of extreme aspect (a
  1 × 20,000,000 PNG padded to 512 rows is 10 gigapixels)."""
  if cfg.mode == "native":
    return max(height, cfg.native_crop), max(width, cfg.native_crop)
  size = cfg.image_size
  target = max(short_side, size) if short_side else cfg.resize_size
  s = target / max(1, min(height, width))
  return max(size, round(height * s)), max(size, round(width * s))


def check_size(
  height: int, width: int, cfg: PipelineConfig, name: str, short_side: int = 0
) -> None:
  """Refuses, before anything is allocated, an image whose padded or resized
  form (`working_size`) is over the pixel bound `cfg.max_pixels` (0: none):
  `image_io.ImageReadError` naming `name` and the bound."""
  bound = image_io.pixel_bound(cfg.max_pixels)
  h, w = working_size(height, width, cfg, short_side)
  if bound and h * w > bound:
    how = (
      f"mirror-padded to the {cfg.native_crop}-pixel window"
      if cfg.mode == "native"
      else f"resized to a short side of {short_side or cfg.resize_size}"
    )
    raise image_io.ImageReadError(
      name,
      f"{width}x{height} {how} is {w}x{h}, {h * w / 1e6:.1f} megapixels, "
      f"over the bound of {bound / 1e6:g} megapixels ({bound} pixels; "
      "config.input.max_pixels) that keeps one image from taking the memory of "
      "all (its aspect ratio is too extreme for this model's views)",
    )


def _normalise(img_u8: np.ndarray) -> np.ndarray:
  return ((img_u8.astype(np.float32) / 255.0) - IMAGENET_MEAN) / IMAGENET_STD


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize with antialiasing (PIL), size = (height, width)."""
  return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR))


def center_crop(img: np.ndarray, resize_size: int, crop: int) -> np.ndarray:
  h, w = img.shape[:2]
  s = resize_size / min(h, w)
  img = _resize(img, (max(crop, round(h * s)), max(crop, round(w * s))))
  h, w = img.shape[:2]
  y, x = (h - crop) // 2, (w - crop) // 2
  return img[y : y + crop, x : x + crop]


def random_resized_crop(
  img: np.ndarray, size: int, scale, ratio, rng: np.random.Generator
) -> np.ndarray:
  """torchvision's RandomResizedCrop sampling (10 tries, then a centre crop)."""
  h, w = img.shape[:2]
  area = h * w
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    cw = int(round(np.sqrt(target * aspect)))
    ch = int(round(np.sqrt(target / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      y = int(rng.integers(0, h - ch + 1))
      x = int(rng.integers(0, w - cw + 1))
      return _resize(img[y : y + ch, x : x + cw], (size, size))
  side = min(h, w)
  y, x = (h - side) // 2, (w - side) // 2
  return _resize(img[y : y + side, x : x + side], (size, size))


# Where a record's image comes from; none of them reaches a batch.
IMAGE_FIELDS = ("path", "image_u8", "image_store", "image_row")


def record_image(record: dict, max_pixels: int) -> tuple[np.ndarray, dict]:
  """(uint8 RGB image, the record's other fields): the image comes decoded as
  `image_u8` (caption pairs read from TFDS, `data/coco.py`), from row
  `image_row` of the prepared store `image_store`, or is read from `path`."""
  rest = {k: v for k, v in record.items() if k not in IMAGE_FIELDS}
  if "image_u8" in record:
    return record["image_u8"], rest
  if "image_store" in record:
    return record["image_store"].image(int(record["image_row"])), rest
  return image_io.read_image_uint8(record["path"], max_pixels=max_pixels), rest


class _TrainImage(grain.transforms.RandomMap):
  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    img, out = record_image(record, self.cfg.max_pixels)
    if self.cfg.mode == "native":
      check_size(*img.shape[:2], self.cfg, record.get("path", "<image>"))
      img = native.random_crop(img, self.cfg.native_crop, rng)
    else:
      img = random_resized_crop(
        img, self.cfg.image_size, self.cfg.crop_scale, self.cfg.crop_ratio, rng
      )
    if self.cfg.flip and rng.random() < 0.5:
      img = img[:, ::-1]
    out["image"] = _normalise(img)
    return out


class _EvalImage(grain.transforms.Map):
  def __init__(self, cfg: PipelineConfig):
    self.cfg = cfg

  def map(self, record: dict) -> dict:
    img, out = record_image(record, self.cfg.max_pixels)
    out["image"] = eval_views(img, self.cfg, record.get("path", "<image>"))
    return out


def eval_views(img: np.ndarray, cfg: PipelineConfig, name: str = "<image>") -> np.ndarray:
  """The evaluation view of a uint8 image, normalised: [size, size, 3] for
  'resize' (centre crop), [K, crop, crop, 3] for 'native' (the grid). An image
  whose padded or resized form is over `cfg.max_pixels` is refused first
  (`check_size`; `name` names it)."""
  if cfg.mode in ("native", "resize"):
    check_size(*img.shape[:2], cfg, name)
  if cfg.mode == "native":
    return _normalise(native.grid_crops(img, cfg.native_crop, tuple(cfg.eval_grid)))
  if cfg.mode != "resize":
    raise ValueError(f"config.input.mode={cfg.mode!r}: 'resize' or 'native'")
  return _normalise(center_crop(img, cfg.resize_size, cfg.image_size))


def input_size(cfg: PipelineConfig) -> int:
  """The side of the square images the model sees in this mode."""
  return cfg.native_crop if cfg.mode == "native" else cfg.image_size


def _process_batch(global_batch: int) -> int:
  n = jax.process_count()
  if global_batch % n:
    raise ValueError(f"global batch {global_batch} is not divisible by the {n} JAX processes")
  return global_batch // n


class _GlobalStream(grain.sources.RandomAccessDataSource):
  """This process's rows of an endless, epoch-wise shuffled stream of records.

  Global position g (0, 1, 2, ...) is record `perm_q[g mod N]` of epoch
  q = g div N, where perm_q is drawn from (seed, q): the same sequence on every
  process and for any number of processes. Process i of n reads, of global
  batch t, only the rows t·B + i·B/n ... t·B + (i+1)·B/n − 1 (B the global
  batch); element e of this source is the e-th such row after the `start`-th
  global batch. Each row carries its global position, which seeds its
  augmentation: batch t is the same global batch, and each image is cropped
  and flipped the same way, whether one process or many read it, and whether
  the run was interrupted or not.
  """

  def __init__(self, records: Sequence, global_batch: int, seed: int, start: int):
    self.records, self.seed, self.start = records, seed, start
    self.n, self.rows = len(records), global_batch // jax.process_count()
    self.global_batch, self.offset = global_batch, jax.process_index() * self.rows
    self._perm = (-1, None)

  def __len__(self) -> int:
    return 2**62  # endless: training stops at its last step

  def __repr__(self) -> str:  # grain checks a restored iterator's source by repr
    return (
      f"_GlobalStream(records={self.n}, global_batch={self.global_batch}, "
      f"seed={self.seed}, rows={self.offset}+{self.rows})"
    )

  def position(self, e: int) -> int:
    step, row = divmod(e, self.rows)
    return (self.start + step) * self.global_batch + self.offset + row

  def __getitem__(self, e: int):
    g = self.position(e)
    epoch, k = divmod(g, self.n)
    if self._perm[0] != epoch:
      self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
    return dict(self.records[int(self._perm[1][k])], _position=np.int64(g))


class _Augment(grain.transforms.Map):
  """`transform.random_map(record, rng)` with the rng of the row's global position."""

  def __init__(self, transform: grain.transforms.RandomMap, seed: int):
    self.transform, self.seed = transform, seed

  def map(self, record: dict) -> dict:
    rng = np.random.default_rng([self.seed, 1, int(record.pop("_position"))])
    return self.transform.random_map(record, rng)


def train_loader(
  records: Sequence,
  cfg: PipelineConfig,
  global_batch: int,
  seed: int,
  transform=None,
  start_step: int = 0,
) -> grain.DataLoader:
  """Endless, shuffled, augmented batches of this process's rows of each global
  batch (`_GlobalStream`), from global batch `start_step` on: a resumed run
  passes the step it resumes at and reads exactly the batches an uninterrupted
  run would.

  `transform`: the per-record `RandomMap` (default: read and augment the image).
  """
  batch = _process_batch(global_batch)
  if len(records) < global_batch:
    raise ValueError(
      f"the training set has {len(records)} samples, fewer than one "
      f"batch of {global_batch}: lower the batch size"
    )
  source = _GlobalStream(records, global_batch, seed, start_step)
  sampler = grain.samplers.IndexSampler(
    num_records=len(source),
    shard_options=grain.sharding.NoSharding(),
    shuffle=False,
    num_epochs=1,
    seed=seed,
  )
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[
      _Augment(transform or _TrainImage(cfg), seed),
      grain.transforms.Batch(batch, drop_remainder=True),
    ],
    worker_count=cfg.workers,
    worker_buffer_size=cfg.prefetch,
  )


def eval_batches(
  records: list[dict], cfg: PipelineConfig, global_batch: int, local: bool = False
) -> Iterator[dict]:
  """Every record once, in order; the last batch is padded and `valid` marks rows.

  With several processes each reads its shard of the records, as
  `global_batch // process_count` rows per batch, and every process yields the
  same number of batches (a process with fewer rows pads with invalid ones), so
  that their global batches line up. `local`: this process reads every record
  in batches of `global_batch` (inference on one host's devices).
  """
  n_proc = 1 if local else jax.process_count()
  batch = global_batch if local else _process_batch(global_batch)
  shard = (
    grain.sharding.NoSharding() if local else grain.sharding.ShardByJaxProcess(drop_remainder=False)
  )
  per_process = -(-len(records) // n_proc)  # ceiling divisions
  num_batches = -(-per_process // batch)
  sampler = grain.samplers.IndexSampler(
    num_records=len(records), shard_options=shard, shuffle=False, num_epochs=1, seed=0
  )
  loader = grain.DataLoader(
    data_source=records,
    sampler=sampler,
    operations=[_EvalImage(cfg), grain.transforms.Batch(batch, drop_remainder=False)],
    worker_count=cfg.workers,
    worker_buffer_size=cfg.prefetch,
  )
  count, last = 0, None
  for b in loader:
    n = len(b["index"])
    b["valid"] = np.arange(batch) < n
    if n < batch:
      b = {
        k: (v if k == "valid" else np.concatenate([v, np.repeat(v[-1:], batch - n, axis=0)]))
        for k, v in b.items()
      }
    count, last = count + 1, b
    yield b
  for _ in range(count, num_batches if last is not None else 0):
    yield dict(last, valid=np.zeros(batch, bool))  # this process's shard ran out
