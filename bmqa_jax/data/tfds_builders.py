r"""TFDS builders for the low-light IQA datasets and for any folder of scored images.

Builders (registered with TFDS when this module is imported):

=============  =============================================================
`mliq`         MLIQ (paper Sec. 3): 3,600 low-light images, MOS, the spoken
               quality semantic description (QSD) as text and optional audio,
               5 devices, 720 scenes of 5 captures; split 8:1:1 by scene.
`dark4k`       Dark-4K (Sec. 5.1.1): 424 UHD low-light images (Sony α7S-II,
               Fujifilm X-T2) with MOS; image only; the paper's cross-dataset
               test set (read every split for that).
`nnid`         NNID [88]: 2,240 night-time images, 448 scenes × 5 captures,
               MOS; split 8:1:1 by scene.
`biq2021`      BIQ2021: 12,000 photos with MOS in [0, 1] and the official
               train/test split as published on GitHub; `val` is 10 % of the
               official training images.
`iqa_folder`   Any folder of images plus a CSV of scores; column names, MOS
               scale and split rule are fields of :class:`IqaConfig`.
=============  =============================================================

None of them downloads anything: the files go into a *manual directory* whose
expected layout each builder's `MANUAL_DOWNLOAD_INSTRUCTIONS` (printed in every
error) describes. A missing CSV or any missing image/audio file stops the build
with an error naming them.

What is stored: the image file's *encoded bytes as they are* (JPEG, PNG 8/16
bit, ...), never decoded at build time (4K photos stay small and fast to build,
16-bit PNGs keep their precision); `bmqa_jax.data.image_io` decodes them at
read time with the same strict rules as files. Features: `image` (bytes),
`filename`, `mos` (float32 in [0, 1]), `scene`, `device`, `text`, `audio`
(encoded WAV bytes, empty without audio), `audio_filename`.

Splits `train`/`val`/`test`: the dataset's own when it has one (a split column
or per-split CSVs), else a scene-wise 8:1:1 random split from `IqaConfig.seed`
(`bmqa_jax.data.scenes.scene_split`, Sec. 5.1.1).

Every field of the builder's :class:`IqaConfig` is recorded in the prepared
data (the config description): :func:`build` refuses to reuse a dataset
prepared under the same name from other fields (`overwrite=True` replaces it).

Reading: `tfds.data_source(name, data_dir=...)` gives random-access sources
that Grain reads directly (:func:`grain_dataset`). Training and evaluation go
through :func:`export_manifest`, which reads every split with Grain once and
writes the images plus a manifest (README.md, 'Your own data') next to the
prepared data, so the existing input pipeline, manifest checks and cross-dataset
evaluation work unchanged (`config.data.kind='tfds'`). This module needs
TensorFlow and importlib_resources (`pip install -e .[tfds]`): TFDS defines
builders with them. Preparing and exporting are in `tfds_export`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from bmqa_jax import log as log_lib
from bmqa_jax.data import scenes as splits_lib
from bmqa_jax.data import tfds_export
from bmqa_jax.data.tfds_export import PreparedDataMismatchError  # noqa: F401  (re-exported)
from bmqa_jax.data.tfds_export import data_sources, grain_dataset

SPLITS = splits_lib.SPLIT_NAMES
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_MAX_LISTED = 20  # missing files named in an error


class MissingFilesError(FileNotFoundError):
  """Files the layout needs are not in the manual directory (named in the message)."""


@dataclasses.dataclass(eq=False)
class IqaConfig(tfds.core.BuilderConfig):
  """Where the scores are and how to read them.

  Attributes:
    scores_csv: CSV with one row per image, relative to the manual directory;
      or '' when `split_csvs` is used.
    split_csvs: ((split, csv), ...): one CSV per split (e.g. BIQ2021's
      Train.csv/Test.csv).
    image_dir: folder the image names are relative to ('' = the manual dir).
    image_column / mos_column: required columns.
    scene_column: '' = each image is its own scene (its file name).
    split_column: '' = no split in the CSV; a scene-wise random split is drawn.
    device_column, text_column, audio_column: optional ('' = none).
    audio_dir: folder audio names are relative to.
    mos_min, mos_max: the CSV's MOS scale, mapped linearly to [0, 1].
    clip_mos: clip the mapped MOS to [0, 1] (BIQ2021 publishes a few values
      slightly below 0); otherwise an out-of-range MOS is an error.
    fractions: train/val/test fractions of the scenes for the random split.
    val_from_train: with per-split CSVs that have no val split, this fraction
      of the training scenes becomes `val`.
    seed: of the random split.
  """

  scores_csv: str = "scores.csv"
  split_csvs: tuple[tuple[str, str], ...] = ()
  image_dir: str = ""
  image_column: str = "image"
  mos_column: str = "mos"
  scene_column: str = ""
  split_column: str = ""
  device_column: str = ""
  text_column: str = ""
  audio_column: str = ""
  audio_dir: str = ""
  mos_min: float = 0.0
  mos_max: float = 1.0
  clip_mos: bool = False
  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  val_from_train: float = 0.1
  seed: int = 0

  def __post_init__(self):
    # The prepared data's identity: TFDS stores the description in the
    # prepared dataset_info.json, where `build` and `export_manifest` compare it.
    self.description = tfds_export.with_fields(self.description, self)


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
      "filename": tfds.features.Text(),
      "mos": tfds.features.Scalar(dtype=np.float32),
      "scene": tfds.features.Text(),
      "device": tfds.features.Text(),
      "text": tfds.features.Text(),
      "audio": tfds.features.Tensor(shape=(), dtype=np.object_),  # WAV bytes or b""
      "audio_filename": tfds.features.Text(),
    }
  )


@dataclasses.dataclass
class _Row:
  image: str  # relative to image_dir, as written in the CSV
  mos: float
  scene: str
  split: str
  device: str = ""
  text: str = ""
  audio: str = ""


def _read_csv(path: str, cfg: IqaConfig, instructions: str) -> list[dict]:
  if not os.path.isfile(path):
    raise MissingFilesError(f"scores file {path!r} does not exist.\n{instructions}")
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path}: no rows")
  need = [cfg.image_column, cfg.mos_column] + [
    c for c in (cfg.scene_column, cfg.split_column, cfg.device_column, cfg.text_column) if c
  ]
  missing = [c for c in need if c not in rows[0]]
  if missing:
    raise ValueError(
      f"{path}: no column(s) {missing}; it has {sorted(rows[0])}. "
      "Set the column names in the builder config."
    )
  return rows


def _mos(value: str, cfg: IqaConfig, where: str) -> float:
  try:
    raw = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: MOS {value!r} is not a number") from None
  mos = (raw - cfg.mos_min) / (cfg.mos_max - cfg.mos_min)
  if not np.isfinite(mos):
    raise ValueError(f"{where}: MOS {value!r} is not finite")
  if cfg.clip_mos:
    return float(np.clip(mos, 0.0, 1.0))
  if not 0.0 <= mos <= 1.0:
    raise ValueError(
      f"{where}: MOS {raw} is outside [{cfg.mos_min}, {cfg.mos_max}] "
      "(set mos_min/mos_max or clip_mos in the builder config)"
    )
  return mos


def read_layout(root: str, cfg: IqaConfig, instructions: str = "") -> list[_Row]:
  """The rows of a manual directory, every referenced file checked to exist."""
  if not os.path.isdir(root):
    raise MissingFilesError(f"manual directory {root!r} does not exist.\n{instructions}")
  sources = list(cfg.split_csvs) if cfg.split_csvs else [("", cfg.scores_csv)]
  missing_csv = [
    os.path.join(root, c) for _, c in sources if not os.path.isfile(os.path.join(root, c))
  ]
  if missing_csv:
    raise MissingFilesError(f"missing score file(s): {missing_csv}.\n{instructions}")
  rows, seen = [], {}
  for split, name in sources:
    path = os.path.join(root, name)
    for i, r in enumerate(_read_csv(path, cfg, instructions), 2):
      where = f"{path}, row {i}"
      image = str(r[cfg.image_column] or "").strip()
      if not image:
        raise ValueError(f"{where}: empty {cfg.image_column!r}")
      if image in seen:
        raise ValueError(f"{where}: image {image!r} is listed twice (first at {seen[image]})")
      seen[image] = where
      scene = (
        str(r[cfg.scene_column]).strip()
        if cfg.scene_column
        else os.path.splitext(os.path.basename(image))[0]
      )
      if not scene:
        raise ValueError(f"{where}: empty {cfg.scene_column!r}")
      row_split = split or (str(r[cfg.split_column]).strip() if cfg.split_column else "")
      if row_split and row_split not in SPLITS:
        raise ValueError(f"{where}: split {row_split!r} is not one of {SPLITS}")
      rows.append(
        _Row(
          image=image,
          mos=_mos(r[cfg.mos_column], cfg, where),
          scene=scene,
          split=row_split,
          device=str(r.get(cfg.device_column) or "").strip() if cfg.device_column else "",
          text=str(r.get(cfg.text_column) or "").strip() if cfg.text_column else "",
          audio=str(r.get(cfg.audio_column) or "").strip() if cfg.audio_column else "",
        )
      )
  missing = [
    os.path.join(root, cfg.image_dir, r.image)
    for r in rows
    if not os.path.isfile(os.path.join(root, cfg.image_dir, r.image))
  ]
  missing += [
    os.path.join(root, cfg.audio_dir, r.audio)
    for r in rows
    if r.audio and not os.path.isfile(os.path.join(root, cfg.audio_dir, r.audio))
  ]
  if missing:
    listed = "\n  ".join(missing[:_MAX_LISTED])
    more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise MissingFilesError(
      f"{len(missing)} file(s) named in the scores are missing:\n  {listed}{more}\n{instructions}"
    )
  _assign_splits(rows, cfg)
  return rows


def _assign_splits(rows: list[_Row], cfg: IqaConfig) -> None:
  """Fills `split` where the data has none; a scene must not span splits."""
  if all(r.split for r in rows):
    if "val" not in {r.split for r in rows} and cfg.val_from_train > 0:
      train = [r for r in rows if r.split == "train"]
      f = cfg.val_from_train
      assign = splits_lib.scene_split((r.scene for r in train), cfg.seed, (1.0 - f, f, 0.0))
      for r in train:
        r.split = assign[r.scene]
  elif any(r.split for r in rows):
    raise ValueError("some rows have a split and others do not; give every row one or none")
  else:
    assign = splits_lib.scene_split((r.scene for r in rows), cfg.seed, cfg.fractions)
    for r in rows:
      r.split = assign[r.scene]
  where = {}
  for r in rows:
    if where.setdefault(r.scene, r.split) != r.split:
      raise ValueError(
        f"scene {r.scene!r} is in splits {where[r.scene]!r} and "
        f"{r.split!r}: a scene must stay in one split (Sec. 5.1.1)"
      )


class _IqaBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared code: a manual directory described by an `IqaConfig`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=_features(),
      supervised_keys=("image", "mos"),
      description=(self.__doc__ or "").strip(),
    )

  def _split_generators(self, dl_manager):
    # Our own check first: TFDS only says the folder is empty, we name the files.
    root = str(dl_manager._manual_dir)  # pylint: disable=protected-access
    rows = read_layout(root, self.builder_config, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {
      s: self._generate_examples(root, [r for r in rows if r.split == s])
      for s in SPLITS
      if any(r.split == s for r in rows)
    }

  def _generate_examples(self, root: str, rows: list[_Row]) -> Iterator:
    cfg = self.builder_config
    for r in rows:
      with open(os.path.join(root, cfg.image_dir, r.image), "rb") as f:
        image = f.read()
      audio = b""
      if r.audio:
        with open(os.path.join(root, cfg.audio_dir, r.audio), "rb") as f:
          audio = f.read()
      yield (
        r.image,
        dict(
          image=image,
          filename=r.image,
          mos=np.float32(r.mos),
          scene=r.scene,
          device=r.device,
          text=r.text,
          audio=audio,
          audio_filename=r.audio,
        ),
      )


_COMMON = """
Nothing is downloaded: put the files in a folder and pass it as the manual
directory (`python launch/build_tfds.py --dataset={name} --manual_dir=FOLDER
--data_dir=OUT`). File names may contain spaces; paths are case-sensitive.
"""


class Mliq(_IqaBuilder):
  """MLIQ: multimodal low-light image quality (images, MOS, QSD text, audio)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Expected layout of the manual directory:
    mliq.csv      columns image,mos,scene,device,text[,audio][,split]
                  (mos in [0, 1]; scene: the shooting scene, 5 captures each;
                  text: the QSD transcript; split: train/val/test, optional —
                  without it scenes are split 8:1:1 at random from the seed)
    images/       the image files named in `image`
    audio/        the QSD recordings (WAV) named in `audio`, when given
  """ + _COMMON.format(name="mliq")
  BUILDER_CONFIGS = [
    IqaConfig(
      name="default",
      scores_csv="mliq.csv",
      image_dir="images",
      audio_dir="audio",
      scene_column="scene",
      device_column="device",
      text_column="text",
      audio_column="audio",
    )
  ]


class Dark4k(_IqaBuilder):
  """Dark-4K: UHD low-light images with MOS (image only; cross-dataset test)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Expected layout of the manual directory:
    dark4k.csv    columns image,mos,device (mos in [0, 1]; device: the camera,
                  e.g. sony or fuji); each image is its own scene
    images/       the image files named in `image`
  For the paper's cross-dataset evaluation read all three splits.
  """ + _COMMON.format(name="dark4k")
  BUILDER_CONFIGS = [
    IqaConfig(name="default", scores_csv="dark4k.csv", image_dir="images", device_column="device")
  ]


class Nnid(_IqaBuilder):
  """NNID: natural night-time images, 448 scenes × 5 captures, MOS."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Expected layout of the manual directory:
    nnid.csv      columns image,mos,scene,device (mos in [0, 1]; scene: the
                  visual scene, shared by its 5 captures)
    images/       the image files named in `image` (sub-folders allowed,
                  e.g. images/<device>/<file>)
  """ + _COMMON.format(name="nnid")
  BUILDER_CONFIGS = [
    IqaConfig(
      name="default",
      scores_csv="nnid.csv",
      image_dir="images",
      scene_column="scene",
      device_column="device",
    )
  ]


class Biq2021(_IqaBuilder):
  """BIQ2021: 12,000 real photos with MOS in [0, 1], official train/test split."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Expected layout of the manual directory (as in the published repository):
    Train.csv     columns "Image Name","MOS" (MOS in [0, 1]; a few published
                  values are slightly below 0 and are clipped to 0)
    Test.csv      same columns
    Images/       the JPEG files named in "Image Name", e.g. "ss01 (10).jpg"
  Each photo is its own scene; `val` is 10 % of the training photos.
  """ + _COMMON.format(name="biq2021")
  BUILDER_CONFIGS = [
    IqaConfig(
      name="default",
      scores_csv="",
      split_csvs=(("train", "Train.csv"), ("test", "Test.csv")),
      image_dir="Images",
      image_column="Image Name",
      mos_column="MOS",
      clip_mos=True,
    )
  ]


class IqaFolder(_IqaBuilder):
  """Any folder of images plus a CSV of scores (columns set in the config)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Expected layout of the manual directory (default config; every name is a
  field of bmqa_jax.data.tfds_builders.IqaConfig):
    scores.csv    columns image,mos[,scene][,split] (mos in [0, 1] unless
                  mos_min/mos_max say otherwise; without scene each image is its
                  own scene; without split scenes are split 8:1:1 from the seed)
    the image files named in `image`, relative to the folder
  """ + _COMMON.format(name="iqa_folder")
  BUILDER_CONFIGS = [IqaConfig(name="default")]


BUILDERS = {
  "mliq": Mliq,
  "dark4k": Dark4k,
  "nnid": Nnid,
  "biq2021": Biq2021,
  "iqa_folder": IqaFolder,
}


def build(
  name: str,
  manual_dir: str,
  data_dir: str,
  config: IqaConfig | None = None,
  overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
  """Prepares dataset `name` from `manual_dir` into `data_dir` (needs TensorFlow).

  Data prepared earlier under the same name is reused only when it records the
  same IqaConfig fields; else PreparedDataMismatchError names the folder and
  the differing fields (`overwrite=True` prepares it again).
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; one of {sorted(BUILDERS)}")
  kwargs = {"config": config} if config is not None else {}
  # ArrayRecord: the random-access format `tfds.data_source` and Grain read.
  builder = BUILDERS[name](data_dir=data_dir, file_format="array_record", **kwargs)
  return tfds_export.prepare(builder, manual_dir, overwrite)


def export_manifest(name: str, data_dir: str, out_dir: str | None = None, log=log_lib.info) -> str:
  """`tfds_export.export_manifest` reading through this module's `data_sources`
  and `grain_dataset` (the builders are registered once this module is imported)."""
  return tfds_export.export_manifest(
    name, data_dir, out_dir, log, sources_fn=data_sources, read_fn=grain_dataset
  )
