"""Preparing the TFDS builders of `tfds_builders` and exporting them to files.

A builder config's fields (those an :class:`~bmqa_jax.data.tfds_builders.IqaConfig`
adds to TFDS's BuilderConfig) are written into its description, which TFDS
stores with the prepared data. :func:`prepare` reuses data prepared under the
same name and version only when it records the same fields; otherwise (or when
it records none: an older release) it refuses with the differences named, and
`overwrite=True` prepares it again — never a silent reuse.

:func:`export_manifest` writes a prepared dataset's files and a manifest; its
stamp holds the prepared data's identity, so an export of other prepared data
is written again rather than reused. `tfds_builders` re-exports these (and
registers the builders, which `tfds.builder(name)` needs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import tensorflow_datasets as tfds

from bmqa_jax import log as log_lib
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import scenes as splits_lib
from bmqa_jax.train_lib import workdir as workdir_lib

SPLITS = splits_lib.SPLIT_NAMES
FIELDS_MARK = "bmqa_config="


class PreparedDataMismatchError(ValueError):
  """Prepared data under a dataset name came from another builder config."""


def config_fields(cfg) -> dict:
  """The fields a config class adds to TFDS's BuilderConfig, JSON-normalised."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return json.loads(
    json.dumps(
      {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in base}
    )
  )


def with_fields(description: str | None, cfg) -> str:
  """`description` with `cfg`'s fields recorded at its end (replacing old ones)."""
  given = (description or "").split(FIELDS_MARK)[0].rstrip()
  return (
    ((given + " ") if given else "") + FIELDS_MARK + json.dumps(config_fields(cfg), sort_keys=True)
  )


def recorded_fields(description: str | None) -> dict | None:
  """The config fields recorded in a description (None: none recorded)."""
  if not description or FIELDS_MARK not in description:
    return None
  try:
    return json.loads(description[description.rindex(FIELDS_MARK) + len(FIELDS_MARK) :])
  except ValueError:
    return None


def _prepared_fields(data_dir: str) -> tuple[bool, dict | None]:
  """(whether `data_dir` holds prepared data, the config fields it records)."""
  path = os.path.join(data_dir, "dataset_info.json")
  if not os.path.isfile(path):
    return False, None
  try:
    with open(path, encoding="utf-8") as f:
      return True, recorded_fields(json.load(f).get("configDescription"))
  except (OSError, ValueError, AttributeError):
    return True, None


def prepare(builder, manual_dir: str, overwrite: bool = False):
  """`builder.download_and_prepare` from `manual_dir`, refusing (unless
  `overwrite`) data prepared there from other config fields."""
  prepared, have = _prepared_fields(builder.data_dir)
  want = config_fields(builder.builder_config)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if prepared and have != want:
    if have is None:
      why = "records no builder config fields (prepared by an older release)"
    else:
      why = "was prepared from other config fields: " + "; ".join(
        f"{k}={have.get(k)!r} there, {want.get(k)!r} now"
        for k in sorted(set(have) | set(want))
        if have.get(k) != want.get(k)
      )
    if not overwrite:
      raise PreparedDataMismatchError(
        f"{builder.data_dir} ({builder.info.full_name}) {why}. Give the config "
        "another name, delete that folder, or prepare it again with overwrite=True "
        "(tfds_builders.build)"
      )
    mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
  )
  return builder


def data_sources(name: str, data_dir: str) -> dict:
  """{split: random-access ArrayRecord source} of a prepared dataset."""
  builder = tfds.builder(name, data_dir=data_dir)
  present = [s for s in SPLITS if s in builder.info.splits]
  return dict(
    zip(present, tfds.data_source(name, split=present, data_dir=data_dir, download=False))
  )


def grain_dataset(source):
  """A Grain MapDataset over a TFDS data source, `image`/`audio` as raw bytes."""
  import grain  # pylint: disable=g-import-not-at-top

  return grain.MapDataset.source(source)


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _identity(builder) -> dict:
  """What the export was made from: the dataset, its example count, its config
  fields and a digest of the prepared dataset_info.json."""
  info = builder.info
  total = sum(info.splits[s].num_examples for s in SPLITS if s in info.splits)
  out = {"dataset": info.full_name, "examples": total}
  fields = recorded_fields(getattr(info, "config_description", None))
  if fields is not None:
    out["config"] = fields
  path = os.path.join(str(getattr(builder, "data_dir", "")), "dataset_info.json")
  if os.path.isfile(path):
    with open(path, "rb") as f:
      out["dataset_info_sha256"] = hashlib.sha256(f.read()).hexdigest()
  return out


_EXPORT_ENTRIES = ("files", "manifest.csv", "export_info.json")


def export_manifest(
  name: str,
  data_dir: str,
  out_dir: str | None = None,
  log=log_lib.info,
  sources_fn=None,
  read_fn=None,
) -> str:
  """Writes the prepared dataset's files and a manifest; returns the manifest path.

  Every split is read with Grain from `tfds.data_source`; the images (and
  audio) are written byte for byte under `out_dir` (default
  `data_dir/bmqa_exports/<name>-<version>`), and `manifest.csv` lists them with
  `mos, scene, split, device, text, audio`. Done once: a later call finds the
  manifest and a stamp of the same prepared data and returns at once; an
  export of other prepared data there is replaced (the stamp, written last,
  is removed first). A folder holding anything else is refused.
  `sources_fn(name, data_dir)` / `read_fn(source)` replace :func:`data_sources`
  / :func:`grain_dataset`.
  """
  sources_fn, read_fn = sources_fn or data_sources, read_fn or grain_dataset
  builder = tfds.builder(name, data_dir=data_dir)
  info = builder.info
  tag = name.replace("/", "-").replace(":", "-")
  out_dir = out_dir or os.path.join(data_dir, "bmqa_exports", f"{tag}-{info.version}")
  path = os.path.join(out_dir, "manifest.csv")
  stamp = os.path.join(out_dir, "export_info.json")
  want = _identity(builder)
  if os.path.exists(path) and os.path.exists(stamp):
    with open(stamp) as f:
      if json.load(f) == want:
        return path
  if os.path.isdir(out_dir):
    other = sorted(e for e in os.listdir(out_dir) if e not in _EXPORT_ENTRIES and ".tmp" not in e)
    if other:
      raise manifest_lib.ManifestError(
        f"export folder {out_dir} holds {other[:5]}, which an export does not "
        "write; choose an empty or new folder"
      )
    if os.path.exists(stamp):
      os.remove(stamp)  # the export there is of other prepared data
    shutil.rmtree(os.path.join(out_dir, "files"), ignore_errors=True)
  log(f"exporting {info.full_name} ({want['examples']} examples) to {out_dir} ...")
  rows = []
  for split, source in sources_fn(name, data_dir).items():
    for i, ex in enumerate(read_fn(source)):
      # Names come from the dataset: one that would leave the folder is refused.
      where = f"{info.full_name}, split {split!r}, example {i}"
      full = manifest_lib.safe_join(
        os.path.join(out_dir, "files", split), _text(ex["filename"]), where
      )
      image = os.path.relpath(full, out_dir)
      os.makedirs(os.path.dirname(full), exist_ok=True)
      with open(full, "wb") as f:
        f.write(ex["image"])
      audio = ""
      if _text(ex["audio_filename"]):
        full = manifest_lib.safe_join(
          os.path.join(out_dir, "files", split, "audio"), _text(ex["audio_filename"]), where
        )
        audio = os.path.relpath(full, out_dir)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
          f.write(ex["audio"])
      rows.append(
        dict(
          image=image,
          mos=f"{float(ex['mos']):.6f}",
          scene=_text(ex["scene"]),
          split=split,
          device=_text(ex["device"]),
          text=_text(ex["text"]),
          audio=audio,
        )
      )
  workdir_lib.atomic_write_csv(path, [list(rows[0])] + [list(r.values()) for r in rows])
  workdir_lib.atomic_write(stamp, json.dumps(want))  # last: marks a complete export
  return path
