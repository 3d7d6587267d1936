r"""Prepares a TFDS dataset from files you have (nothing is downloaded).

  bmqa-build-tfds --dataset=biq2021 --manual_dir=~/BIQ2021 --data_dir=~/tfds
  bmqa-build-tfds --dataset=iqa_folder --manual_dir=my_photos \
      --data_dir=~/tfds --config=name=koniq,scores_csv=koniq.csv,image_dir=512x384,\
image_column=image_name,mos_column=MOS,mos_min=1,mos_max=5

Datasets: mliq, dark4k, nnid, biq2021, iqa_folder (layout: --show_layout). Train with
`--config.data.kind=tfds --config.data.tfds_name=NAME --config.data.tfds_dir=DIR`
(NAME: `iqa_folder/<config name>` for a custom config). --export also writes the
manifest `bmqa-evaluate --manifest=...` scores (cross-dataset, e.g.
Dark-4K). Needs TensorFlow: pip install ".[tfds]" (in a clone).
"""

import dataclasses
import os

from absl import app
from absl import flags

from bmqa_jax import config_args
from bmqa_jax.data import tfds_builders

_DATASET = flags.DEFINE_enum("dataset", None, sorted(tfds_builders.BUILDERS), "Which builder.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder with the files.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir to write to.")
_CONFIG = flags.DEFINE_list(
  "config",
  [],
  "key=value fields of IqaConfig that replace the builder's default config (name= required).",
)
_SHOW_LAYOUT = flags.DEFINE_bool("show_layout", False, "Print the expected layout.")
_EXPORT = flags.DEFINE_bool(
  "export",
  False,
  "Also write the files and a manifest (for launch/evaluate.py --manifest: cross-dataset).",
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Rebuild data prepared under the same name from other config fields."
)
flags.mark_flag_as_required("dataset")


def _config(items):
  """An IqaConfig from key=value items, typed by its defaults (fractions: a:b:c)."""
  if not items:
    return None
  cls, values = tfds_builders.IqaConfig, dict(i.partition("=")[::2] for i in items)
  name, fractions = values.pop("name", ""), values.pop("fractions", None)
  if not name:
    raise app.UsageError("--config needs name=<config name>")
  base = cls(name=name)
  fields = {
    f.name: getattr(base, f.name)
    for f in dataclasses.fields(cls)
    if isinstance(getattr(base, f.name), (bool, int, float, str)) and f.name in cls.__annotations__
  }
  try:
    kw = dict(config_args.parse_arg(",".join(f"{k}={v}" for k, v in values.items()), **fields))
  except ValueError as e:
    raise app.UsageError(f"--config: {e}") from e
  if fractions:
    kw["fractions"] = tuple(float(v) for v in fractions.split(":"))
  return cls(name=name, **kw)


def main(argv):
  del argv
  builder = tfds_builders.BUILDERS[_DATASET.value]
  if _SHOW_LAYOUT.value:
    print(builder.MANUAL_DOWNLOAD_INSTRUCTIONS)
    return
  if not _MANUAL_DIR.value or not _DATA_DIR.value:
    raise app.UsageError("give --manual_dir and --data_dir")
  b = tfds_builders.build(
    _DATASET.value,
    os.path.expanduser(_MANUAL_DIR.value),
    os.path.expanduser(_DATA_DIR.value),
    _config(_CONFIG.value),
    overwrite=_OVERWRITE.value,
  )
  print(
    f"prepared {b.info.full_name} in {b.data_dir}: "
    + ", ".join(f"{name} {split.num_examples} examples" for name, split in b.info.splits.items())
  )
  if _EXPORT.value:
    name = _DATASET.value + (f"/{b.builder_config.name}" if _CONFIG.value else "")
    path = tfds_builders.export_manifest(name, os.path.expanduser(_DATA_DIR.value))
    print(f"manifest: {path}")
