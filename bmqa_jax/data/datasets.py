"""From a config to checked samples, a tokenizer and grain records for each split."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import ml_collections as mlc

from bmqa_jax.data import builtin
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.data import tokenizer as tokenizer_lib


def builtin_dir(cfg: mlc.ConfigDict) -> str:
  """Where the built-in dataset for these arguments lives (built on first use)."""
  if cfg.data.builtin_dir:
    return cfg.data.builtin_dir
  args = json.dumps(cfg.data.builtin.to_dict(), sort_keys=True)
  key = hashlib.sha1(f"{builtin.VERSION}{args}".encode()).hexdigest()[:10]
  root = os.environ.get("BMQA_DATA_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "bmqa_jax"))
  return os.path.join(root, f"builtin-{key}")


def manifest_paths(cfg: mlc.ConfigDict, log=print) -> tuple[str, str]:
  """(manifest, pretrain manifest or ''), building the built-in data if needed."""
  if cfg.data.kind == "builtin":
    out = builtin_dir(cfg)
    args = builtin.BuildArgs(**{k: v for k, v in cfg.data.builtin.items()})
    if not os.path.exists(os.path.join(out, "dataset_info.json")):
      log(f"building the built-in dataset in {out} ...")
    path = builtin.build(out, args, log=log)
    return path, os.path.join(out, "pretrain.csv")
  if cfg.data.kind == "manifest":
    if not cfg.data.manifest:
      raise ValueError("config.data.kind='manifest' needs config.data.manifest")
    return cfg.data.manifest, cfg.data.pretrain_manifest
  raise ValueError(f"unknown config.data.kind {cfg.data.kind!r}")


@dataclasses.dataclass
class Data:
  splits: dict[str, list[manifest_lib.Sample]]  # 'train', 'val', 'test', 'pretrain'
  tokenizer: tokenizer_lib.Tokenizer | None
  devices: tuple[str, ...]
  manifest: str

  def records(self, split: str, cfg: mlc.ConfigDict) -> list[dict]:
    return pipeline.to_records(self.splits[split], self.tokenizer,
                               cfg.input.max_text_len, self.devices)


def uses_text(cfg: mlc.ConfigDict) -> bool:
  return "text" in cfg.model.modalities


def load(cfg: mlc.ConfigDict, workdir: str, splits: tuple[str, ...], log=print) -> Data:
  """Reads and checks the manifests (all rows, before any training step)."""
  path, pre_path = manifest_paths(cfg, log)
  need_text = uses_text(cfg)
  opts = dict(check_images=cfg.data.check_images, skip_bad=cfg.data.skip_bad_rows,
              mos_range=tuple(cfg.data.mos_range), log=log)
  names = {"train": cfg.data.train_split, "val": cfg.data.val_split,
           "test": cfg.data.test_split}
  out = {}
  for s in splits:
    if s == "pretrain":
      if not pre_path:
        raise ValueError("a stage reads 'pretrain' data but config.data."
                         "pretrain_manifest is empty")
      out[s] = manifest_lib.load(pre_path, require_mos=False, require_text=True,
                                 splits=[cfg.data.train_split], **opts)
    else:
      out[s] = manifest_lib.load(path, require_mos=True, require_text=need_text,
                                 splits=[names[s]], **opts)
  tok = None
  if need_text:
    tok_path = os.path.join(workdir, "tokenizer.model")
    if not os.path.exists(tok_path):  # trained on training texts only
      train_rows = manifest_lib.load(path, require_mos=False, require_text=True,
                                     check_images=False, splits=[names["train"]],
                                     skip_bad=cfg.data.skip_bad_rows, log=log)
      texts = [s.text for s in train_rows] + [s.text for s in out.get("pretrain", [])]
      log(f"training the tokenizer on {len(texts)} training descriptions")
    else:
      texts = []
    tok = tokenizer_lib.load_or_train(tok_path, texts, cfg.tokenizer.vocab_size)
    all_texts = [s.text for ss in out.values() for s in ss]
    tok.encode(all_texts, cfg.input.max_text_len)
    if tok.truncated:
      log(f"WARNING: {tok.truncated} of {len(all_texts)} descriptions are longer than "
          f"config.input.max_text_len={cfg.input.max_text_len} tokens and are cut; "
          "raise it (and the text encoder's max_len) or the tokenizer's vocab_size")
  devices = tuple(sorted({s.device for ss in out.values() for s in ss if s.device}))
  return Data(splits=out, tokenizer=tok, devices=devices, manifest=path)
