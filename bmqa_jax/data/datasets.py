"""From a config to checked samples, a tokenizer and grain records for each split."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import ml_collections as mlc

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.data import builtin
from bmqa_jax.data import categories
from bmqa_jax.data import coco as coco_lib
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.data import prepared
from bmqa_jax.data import tokenizer as tokenizer_lib


def builtin_dir(cfg: mlc.ConfigDict) -> str:
  """Where the built-in dataset for these arguments lives (built on first use)."""
  if cfg.data.builtin_dir:
    return cfg.data.builtin_dir
  key = builtin.cache_key(cfg.data.builtin.to_dict())  # version, code, arguments
  root = os.environ.get(
    "BMQA_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "bmqa_jax")
  )
  return os.path.join(root, f"builtin-{key}")


def manifest_paths(cfg: mlc.ConfigDict, log=log_lib.info) -> tuple[str, str]:
  """(manifest, pretrain manifest or ''), building the built-in data if needed."""
  if cfg.data.kind == "builtin":
    out = builtin_dir(cfg)
    args = builtin.BuildArgs(**{k: v for k, v in cfg.data.builtin.items()})

    def build():
      if not os.path.exists(os.path.join(out, "dataset_info.json")):
        log(f"building the built-in dataset in {out} ...")
      return builtin.build(out, args, log=log)

    # Process 0 builds (or checks) the folder; then the others check and read it.
    path = sharding.on_process_zero(build, "builtin_data")
    if path is None:
      path = builtin.build(out, args, log=log)
    return path, os.path.join(out, "pretrain.csv")
  if cfg.data.kind == "manifest":
    if not cfg.data.manifest:
      raise ValueError("config.data.kind='manifest' needs config.data.manifest")
    return cfg.data.manifest, cfg.data.pretrain_manifest
  if cfg.data.kind == "tfds":  # a prepared TFDS dataset, exported once to files
    if not cfg.data.tfds_name or not cfg.data.tfds_dir:
      raise ValueError(
        "config.data.kind='tfds' needs config.data.tfds_name and "
        "config.data.tfds_dir (see launch/build_tfds.py)"
      )
    try:
      from bmqa_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top
    except (ImportError, AttributeError) as e:  # TFDS without TensorFlow
      raise ImportError("config.data.kind='tfds' needs TensorFlow: pip install -e .[tfds]") from e
    path = tfds_builders.export_manifest(cfg.data.tfds_name, cfg.data.tfds_dir, log=log)
    return path, cfg.data.pretrain_manifest
  raise ValueError(f"unknown config.data.kind {cfg.data.kind!r}")


@dataclasses.dataclass
class Data:
  splits: dict[str, list[manifest_lib.Sample]]  # 'train', 'val', 'test', 'pretrain'
  tokenizer: tokenizer_lib.Tokenizer | None
  devices: tuple[str, ...]
  manifest: str
  workdir: str  # the run's: its prepared stores live in workdir/prepared
  coco: Any = None  # coco.CocoPairs when the 'pretrain' pairs come from MS-COCO
  log: Callable = log_lib.info

  def records(self, split: str, cfg: mlc.ConfigDict, store: str | None = None) -> Sequence[dict]:
    """Pipeline records, reading their images from the split's prepared store
    when `config.input.store` (or `store`, which overrides it) prepares them
    (`bmqa_jax.data.prepared`, built on first use); caption pairs ('pretrain')
    also carry the multi-hot `labels` of pretraining strategy CL when the run
    has categories."""
    recs = pipeline.to_records(
      self.splits[split], self.tokenizer, cfg.input.max_text_len, self.devices
    )
    if split == "pretrain" and self.coco is not None:
      return coco_lib.CocoRecords(recs, self.coco)  # decoded images from TFDS
    pcfg = pipeline.from_config(cfg)
    pcfg = dataclasses.replace(pcfg, store=store or pcfg.store)
    recs = prepared.attach(recs, pcfg, self.workdir, self.log)
    names = categories.for_config(cfg) if split == "pretrain" else ()
    if names:
      hot = categories.multi_hot([s.text for s in self.splits[split]], names)
      for r, h in zip(recs, hot):
        r["labels"] = h
    return recs


def task_manifest(cfg: mlc.ConfigDict, log=log_lib.info, audio: bool = False) -> str:
  """The manifest the recogniser or the captioner trains on (`config.data` of
  `defaults.task_data`): `config.data.manifest`, or the built-in dataset's,
  built on first use. `audio`: the run needs its spoken descriptions."""
  if cfg.data.kind not in ("builtin", "manifest"):
    raise ValueError(f"unknown config.data.kind {cfg.data.kind!r}: 'builtin' or 'manifest'")
  if cfg.data.kind == "builtin" and audio:
    from bmqa_jax.data import tts  # pylint: disable=g-import-not-at-top

    if not tts.available():
      raise RuntimeError(
        "the built-in dataset has spoken descriptions only with a "
        "speech synthesiser: pip install espeakng-loader"
      )
  data = dict(
    kind=cfg.data.kind,
    manifest=cfg.data.manifest,
    pretrain_manifest="",
    builtin=cfg.data.builtin.to_dict(),
    builtin_dir=cfg.data.builtin_dir,
  )
  return manifest_paths(mlc.ConfigDict(dict(data=data)), log)[0]


def uses_text(cfg: mlc.ConfigDict) -> bool:
  return "text" in cfg.model.modalities


def load(
  cfg: mlc.ConfigDict,
  workdir: str,
  splits: tuple[str, ...],
  log=log_lib.info,
  describe: Callable | None = None,
) -> Data:
  """Reads and checks the manifests (all rows, before any training step).

  With `config.data.text_source` 'audio' or 'captioner' the descriptions are
  generated: `describe(samples) -> samples` fills them (the data layer runs no
  model; `bmqa_jax.experiments.descriptions.for_training` builds it).
  """
  path, pre_path = manifest_paths(cfg, log)
  need_text = uses_text(cfg)
  source = cfg.data.text_source
  given_text = need_text and source == "text"  # else generated (audio, captioner)
  opts = dict(
    check_images=cfg.data.check_images,
    skip_bad=cfg.data.skip_bad_rows,
    mos_range=tuple(cfg.data.mos_range),
    log=log,
    max_pixels=cfg.input.max_pixels,
  )
  names = {"train": cfg.data.train_split, "val": cfg.data.val_split, "test": cfg.data.test_split}
  out = {}
  coco_pairs = None
  for s in splits:
    if s == "pretrain" and cfg.data.pretrain_source == "coco":
      coco_pairs = coco_lib.load(cfg.data.coco_dir, cfg.data.coco_split, log=log)
      out[s] = coco_pairs.samples
    elif s == "pretrain":
      if not pre_path:
        raise ValueError("a stage reads 'pretrain' data but config.data.pretrain_manifest is empty")
      # Caption pretraining never sees a scene held out for validation or test.
      manifest_lib.check_disjoint_scenes(
        path,
        pre_path,
        held_out_splits=(cfg.data.val_split, cfg.data.test_split),
        pretrain_splits=(cfg.data.train_split,),
      )
      out[s] = manifest_lib.load(
        pre_path, require_mos=False, require_text=True, splits=[cfg.data.train_split], **opts
      )
    else:
      out[s] = manifest_lib.load(
        path,
        require_mos=True,
        require_text=given_text,
        splits=[names[s]],
        split_seed=cfg.seed,
        **opts,
      )
      if need_text and source != "text":
        if describe is None:
          raise ValueError(
            f"config.data.text_source={source!r}: the descriptions are generated "
            "by a model; pass describe= (bmqa_jax.experiments.descriptions."
            "for_training, as launch/train.py does)"
          )
        out[s] = describe(out[s])
  tok = None
  if need_text:
    tok_path = os.path.join(workdir, "tokenizer.model")
    # The tokenizer is trained on the training descriptions (and caption pairs)
    # once; a training run passes them again so that a tokenizer of other texts
    # is refused (tokenizer.TokenizerMismatchError) instead of reused.
    texts = []
    if "train" in out:
      texts = [s.text for s in out["train"]] + [s.text for s in out.get("pretrain", [])]
    elif not os.path.exists(tok_path) and given_text:
      train_rows = manifest_lib.load(
        path,
        require_mos=False,
        require_text=True,
        check_images=False,
        splits=[names["train"]],
        skip_bad=cfg.data.skip_bad_rows,
        log=log,
        split_seed=cfg.seed,
      )
      texts = [s.text for s in train_rows]
    elif not os.path.exists(tok_path):
      raise ValueError(f"no tokenizer in {workdir} and no training split loaded")

    def train_or_check():
      if not os.path.exists(tok_path):
        log(f"training the tokenizer on {len(texts)} training descriptions")
      return tokenizer_lib.load_or_train(tok_path, texts, cfg.tokenizer.vocab_size)

    # Process 0 trains (or checks) and writes it; then the others check and load it.
    tok = sharding.on_process_zero(train_or_check, "tokenizer")
    if tok is None:
      tok = tokenizer_lib.load_or_train(tok_path, texts, cfg.tokenizer.vocab_size)
    all_texts = [s.text for ss in out.values() for s in ss]
    tok.encode(all_texts, cfg.input.max_text_len)
    if tok.truncated:
      log(
        f"WARNING: {tok.truncated} of {len(all_texts)} descriptions are longer than "
        f"config.input.max_text_len={cfg.input.max_text_len} tokens and are cut; "
        "raise it (and the text encoder's max_len) or the tokenizer's vocab_size"
      )
  devices = tuple(sorted({s.device for ss in out.values() for s in ss if s.device}))
  return Data(
    splits=out,
    tokenizer=tok,
    devices=devices,
    manifest=path,
    workdir=workdir,
    coco=coco_pairs,
    log=log,
  )
