"""Evaluation of a trained workdir: predictions, metrics, report, scatter plot.

`evaluate_workdir(workdir)` scores the test split of the run's own dataset (or
every row of another manifest: cross-dataset evaluation) with the final weights
of the run's last stage, and writes `eval/metrics.json`
(`{"overall": {plcc, srcc, krcc, rmse, n}, "per_device": {...}}`),
`eval/report.md`, `eval/scatter.png` and `eval/predictions.csv` in the workdir
(another manifest's: in `eval/<manifest stem>[_<split>]/`).
Scores are on the MOS scale of the training data, higher is better.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import orbax.checkpoint as ocp

from bmqa_jax import metrics
from bmqa_jax import sharding
from bmqa_jax.data import datasets
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.data import tokenizer as tokenizer_lib
from bmqa_jax.bmqa import model as bmqa_lib


# PLCC/RMSE are also reported after these monotonic mappings (VQEG protocol).
MAPPINGS = ("logistic4", "logistic5")


def predict(model, variables: dict, records: list[dict], cfg: mlc.ConfigDict,
            mesh, has_text: bool) -> np.ndarray:
  """Scores for `records` in order (the evaluation view of `config.input.mode`)."""
  from bmqa_jax.bmqa import train  # pylint: disable=g-import-not-at-top
  bs = cfg.eval.batch_size
  sharding.check_batch(bs, mesh, "config.eval.batch_size")
  variables = {k: v for k, v in variables.items() if v}

  @jax.jit
  def score(variables, batch):
    images, ids, mask = batch["image"], batch.get("text_ids"), batch.get("text_mask")
    if images.ndim == 4:
      return model.apply(variables, images, ids, mask, train=False)["score"]
    # Native mode: [B, K, crop, crop, 3], the mean score of the K grid views.
    b, k = images.shape[:2]
    rep = lambda x: None if x is None else jnp.repeat(x, k, axis=0)
    s = model.apply(variables, images.reshape((b * k,) + images.shape[2:]),
                    rep(ids), rep(mask), train=False)["score"]
    return s.reshape(b, k).mean(1)

  keys = ["image"] + (["text_ids", "text_mask"] if has_text else [])
  out = np.zeros(len(records), np.float32)
  for batch in pipeline.eval_batches(records, pipeline.from_config(cfg), bs):
    s = score(variables, sharding.put_batch({k: batch[k] for k in keys}, mesh))
    s = np.asarray(jax.device_get(s))
    valid = batch["valid"]
    out[batch["index"][valid]] = s[valid]
  return out


def load_final_variables(workdir: str, cfg: mlc.ConfigDict) -> dict:
  """params and batch_stats of the last stage's latest checkpoint."""
  return _load_final(workdir, cfg)[0]


def _load_final(workdir: str, cfg: mlc.ConfigDict) -> tuple[dict, dict]:
  """(variables, {"stage", "step"}) of the last stage's latest checkpoint."""
  stages = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  path = os.path.abspath(os.path.join(workdir, "checkpoints", stages[-1]))
  mngr = ocp.CheckpointManager(path, item_names=("state", "data_iter"))
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"no checkpoint of the last stage ({stages[-1]}) in "
                            f"{path}: has training finished?")
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))["state"]
  variables = {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}
  return variables, {"stage": stages[-1], "step": int(step)}


def config_hash(workdir: str) -> str:
  """sha256 of the workdir's config.json as stored (which run was scored)."""
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def default_out_dir(workdir: str, manifest: str | None = None,
                    manifest_split: str | None = None) -> str:
  """workdir/eval for the run's own data; workdir/eval/<manifest stem>[_<split>]
  for another manifest, so a cross-dataset evaluation never replaces the run's
  own eval/metrics.json (which launch/report.py and bmqa_jax/splits.py read)."""
  out = os.path.join(workdir, "eval")
  if manifest:
    stem = os.path.splitext(os.path.basename(os.path.normpath(manifest)))[0]
    out = os.path.join(out, stem + (f"_{manifest_split}" if manifest_split else ""))
  return out


def _tower_frozen(cfg: mlc.ConfigDict, variables: dict) -> bool:
  """Whether the last stage trained from cached features of a frozen tower (the
  evaluation then reads the same cache: the same numbers, without the tower)."""
  from bmqa_jax.bmqa import train  # pylint: disable=g-import-not-at-top
  last = [s.strip() for s in cfg.stages.split(",") if s.strip()][-1]
  labels = train.trainable_labels(variables["params"], cfg[last].trainable)
  return train.uses_feature_cache(cfg, last, train.tower_trains(labels))


def load_model(workdir: str):
  """(config, model, variables, tokenizer) of a trained workdir."""
  return _load_model(workdir)[:4]


def _load_model(workdir: str):
  """load_model's four, then {"stage", "step"} of the checkpoint loaded."""
  from bmqa_jax.bmqa import train  # pylint: disable=g-import-not-at-top
  cfg = train.load_config(workdir)
  tok = None
  if datasets.uses_text(cfg):
    tok = tokenizer_lib.Tokenizer(os.path.join(workdir, "tokenizer.model"))
  model = bmqa_lib.from_config(cfg, tok.vocab_size if tok else None)
  variables, ckpt = _load_final(workdir, cfg)
  return cfg, model, variables, tok, ckpt


def evaluate_workdir(workdir: str, manifest: str | None = None, split: str = "test",
                     out_dir: str | None = None, log=print, text_source: str | None = None,
                     captioner: str | None = None, asr: str | None = None,
                     manifest_split: str | None = None) -> dict:
  """Scores a split or manifest; writes out_dir (default `default_out_dir`:
  workdir/eval, or workdir/eval/<manifest stem>[_<manifest_split>] for another
  manifest). metrics.json records the checkpoint scored ("checkpoint": stage
  and step) and the sha256 of the workdir's config.json ("config_sha256").

  `text_source` ('text', 'audio', 'captioner'; default the run's
  config.data.text_source, or 'captioner' when `captioner` is given) says where
  the descriptions come from; `captioner`/`asr` are the generating models'
  workdirs. With 'captioner' a manifest needs no text (image-only BMQA, Eq. 16),
  and the model trained on image+text is used as it is. `manifest_split`: score
  only the manifest's rows of this split (default every row).
  """
  config_sha256 = config_hash(workdir)  # before loading: the config scored
  cfg, model, variables, tok, ckpt = _load_model(workdir)
  has_text = tok is not None
  from bmqa_jax.experiments import descriptions  # pylint: disable=g-import-not-at-top
  source = text_source or ("captioner" if captioner else
                           cfg.data.get("text_source", "text"))
  descriptions.check_source(source)
  cfg.data.text_source = source
  cfg.data.captioner_workdir = captioner or cfg.data.get("captioner_workdir", "")
  cfg.data.asr_workdir = asr or cfg.data.get("asr_workdir", "")
  if not has_text and source in descriptions.GENERATED:
    log(f"note: {workdir} is an image-only model; no descriptions are generated")
  if manifest:
    given = has_text and source == "text"
    samples = manifest_lib.load(manifest, require_mos=True, require_text=given,
                                check_images=cfg.data.check_images,
                                splits=[manifest_split] if manifest_split else None,
                                skip_bad=cfg.data.skip_bad_rows, log=log)
    if has_text and not given:
      samples = descriptions.fill(samples, source, cfg.data[
          "asr_workdir" if source == "audio" else "captioner_workdir"], workdir, log)
    name = os.path.basename(manifest) + (f" ({manifest_split})" if manifest_split else "")
  else:
    data = datasets.load(cfg, workdir, (split,), log=log)
    samples = data.splits[split]
    name = f"{split} split of {data.manifest}"
  devices = sorted({s.device for s in samples if s.device})
  records = pipeline.to_records(samples, tok, cfg.input.max_text_len, devices)
  mesh = sharding.make_mesh(cfg)
  if _tower_frozen(cfg, variables):  # the training run's cached features serve
    from bmqa_jax.bmqa import feature_cache  # pylint: disable=g-import-not-at-top
    pcfg = pipeline.from_config(cfg)
    cache = feature_cache.build(model, variables, records, cfg, pcfg, workdir, mesh, log)
    preds = feature_cache.predict(model, variables, cache, records, cfg, mesh, has_text)
  else:
    preds = predict(model, variables, records, cfg, mesh, has_text)
  mos = np.array([s.mos for s in samples])
  groups = [s.device or "all" for s in samples]
  g = metrics.grouped_summary(preds, mos, groups, mapping=MAPPINGS)
  result = {"overall": g["overall"], "per_device": g["per_group"] if devices else {},
            "dataset": name, "workdir": os.path.abspath(workdir),
            "score_range": list(cfg.data.mos_range), "higher_is_better": True,
            "checkpoint": ckpt, "config_sha256": config_sha256}
  if manifest:
    result["manifest"] = os.path.abspath(manifest)
  if has_text:
    result["text_source"] = source
  out_dir = out_dir or default_out_dir(workdir, manifest, manifest_split)
  write_outputs(out_dir, result, samples, preds)
  if has_text and source in descriptions.GENERATED:
    descriptions.write_csv(os.path.join(out_dir, "descriptions.csv"), samples, source)
  log(format_table(result))
  return result


def format_table(result: dict) -> str:
  """The overall row, then one per device (metrics.format_table's columns)."""
  rows = [("overall", result["overall"])] + sorted(result["per_device"].items())
  return metrics.format_table(rows)


def write_outputs(out_dir: str, result: dict, samples: Sequence, preds) -> None:
  os.makedirs(out_dir, exist_ok=True)
  _atomic_write(os.path.join(out_dir, "metrics.json"),
                json.dumps(result, indent=1, default=float))
  report = (f"# BMQA evaluation\n\nDataset: {result['dataset']}\n\n"
            f"Workdir: {result['workdir']}\n\n{format_table(result)}\n\n"
            "SRCC/KRCC and raw PLCC/RMSE on the predictions as they are; "
            "PLCC/RMSE L4 and L5 after the 4- and 5-parameter logistic mapping "
            "(n/c: the fit did not converge). RMSE is on the MOS scale. "
            "![scatter](scatter.png)\n")
  _atomic_write(os.path.join(out_dir, "report.md"), report)
  with open(os.path.join(out_dir, "predictions.csv.tmp"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image", "device", "mos", "prediction"])
    for s, p in zip(samples, preds):
      w.writerow([s.image, s.device, s.mos, f"{p:.5f}"])
  os.replace(os.path.join(out_dir, "predictions.csv.tmp"),
             os.path.join(out_dir, "predictions.csv"))
  scatter(os.path.join(out_dir, "scatter.png"), samples, preds, result["overall"])


def scatter(path: str, samples, preds, overall: dict) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
  devices = sorted({s.device or "all" for s in samples})
  mos = np.array([s.mos for s in samples])
  for d in devices:
    sel = np.array([(s.device or "all") == d for s in samples])
    ax.scatter(mos[sel], np.asarray(preds)[sel], s=10, alpha=0.7, label=d)
  lo = float(min(mos.min(), np.min(preds)))
  hi = float(max(mos.max(), np.max(preds)))
  ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax.set_xlabel("MOS")
  ax.set_ylabel("predicted score")
  ax.set_title(f"PLCC {overall['plcc']:.3f}  SRCC {overall['srcc']:.3f}  "
               f"RMSE {overall['rmse']:.3f}")
  if len(devices) > 1:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png")
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def _atomic_write(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
