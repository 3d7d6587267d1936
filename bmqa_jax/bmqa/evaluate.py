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

import hashlib
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from bmqa_jax import config_bases
from bmqa_jax import log as log_lib
from bmqa_jax import metrics
from bmqa_jax import metrics_report
from bmqa_jax import sharding
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.data import datasets
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.data import prepared
from bmqa_jax.data import tokenizer as tokenizer_lib
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import workdir as workdir_lib
from bmqa_jax.bmqa import model as bmqa_lib


# PLCC/RMSE are also reported after these monotonic mappings (VQEG protocol).
MAPPINGS = ("logistic4", "logistic5")


def predict(
  model, variables: dict, records: list[dict], cfg: mlc.ConfigDict, mesh, has_text: bool
) -> np.ndarray:
  """Scores for `records` in order (the evaluation view of `config.input.mode`).

  With several processes each reads and scores its shard of the records; the
  scores are gathered on every process."""
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
    s = model.apply(
      variables, images.reshape((b * k,) + images.shape[2:]), rep(ids), rep(mask), train=False
    )["score"]
    return s.reshape(b, k).mean(1)

  keys = ["image"] + (["text_ids", "text_mask"] if has_text else [])
  out = np.zeros(len(records), np.float32)
  for batch in pipeline.eval_batches(records, pipeline.from_config(cfg), bs):
    s = score(variables, sharding.put_batch({k: batch[k] for k in keys}, mesh))
    s = sharding.to_host(s)  # every process's rows, in process order
    valid = sharding.gather_local(batch["valid"])
    out[sharding.gather_local(batch["index"])[valid]] = s[valid]
  return out


def load_final_variables(workdir: str, cfg: mlc.ConfigDict) -> dict:
  """params and batch_stats of the last stage's latest checkpoint."""
  return _load_final(workdir, cfg)[0]


class UnfinishedStageError(RuntimeError):
  """The last stage of a workdir has not run all its steps."""


def _load_final(
  workdir: str, cfg: mlc.ConfigDict, allow_unfinished: bool = False
) -> tuple[dict, dict]:
  """(variables, {"stage", "step"}) of the last stage's latest checkpoint
  (weights only: nothing of the optimiser is built or read)."""
  last = stage_lib.stage_names(cfg)[-1]
  path = os.path.join(workdir, "checkpoints", last)
  if checkpoint.latest_step(path) is None:
    raise FileNotFoundError(
      f"no checkpoint of the last stage ({last}) in {os.path.abspath(path)}: has training finished?"
    )
  variables, step = checkpoint.load_weights(path)
  finished = stage_lib.finished_stages(workdir)
  if finished is not None and last not in finished and not allow_unfinished:
    raise UnfinishedStageError(
      f"stage {last} of {workdir!r} has not finished (its latest checkpoint is "
      f"step {step}); resume training (launch/train.py with the same workdir), or "
      "score the unfinished weights with --allow_unfinished"
    )
  return variables, {
    "stage": last,
    "step": int(step),
    "finished": None if finished is None else last in finished,
  }


def config_hash(workdir: str) -> str:
  """sha256 of the workdir's config.json as stored (which run was scored)."""
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def default_out_dir(
  workdir: str, manifest: str | None = None, manifest_split: str | None = None
) -> str:
  """workdir/eval for the run's own data; workdir/eval/<manifest stem>[_<split>]
  for another manifest, so a cross-dataset evaluation never replaces the run's
  own eval/metrics.json (which launch/report.py and experiments/repeated.py read)."""
  out = os.path.join(workdir, "eval")
  if manifest:
    stem = os.path.splitext(os.path.basename(os.path.normpath(manifest)))[0]
    out = os.path.join(out, stem + (f"_{manifest_split}" if manifest_split else ""))
  return out


def _tower_frozen(cfg: mlc.ConfigDict, variables: dict) -> bool:
  """Whether the last stage trained from cached features of a frozen tower (the
  evaluation then reads the same cache: the same numbers, without the tower)."""
  last = stage_lib.stage_names(cfg)[-1]
  labels = stage_lib.stage_labels(cfg, last, variables["params"])
  return stage_lib.uses_feature_cache(cfg, last, stage_lib.tower_trains(labels))


def load_model(workdir: str, allow_unfinished: bool = False):
  """(config, model, variables, tokenizer) of a trained workdir."""
  return _load_model(workdir, allow_unfinished)[:4]


def _load_model(workdir: str, allow_unfinished: bool = False):
  """load_model's four, then {"stage", "step"} of the checkpoint loaded."""
  cfg = workdir_lib.load_config(workdir, complete=config_bases.complete)
  tok = None
  if datasets.uses_text(cfg):
    tok = tokenizer_lib.Tokenizer(os.path.join(workdir, "tokenizer.model"))
  model = bmqa_lib.from_config(cfg, tok.vocab_size if tok else None)
  variables, ckpt = _load_final(workdir, cfg, allow_unfinished)
  return cfg, model, variables, tok, ckpt


def evaluate_workdir(
  workdir: str,
  manifest: str | None = None,
  split: str = "test",
  out_dir: str | None = None,
  log=log_lib.info,
  text_source: str = "text",
  describe: Callable | None = None,
  manifest_split: str | None = None,
  allow_unfinished: bool = False,
) -> dict:
  """Scores a split or manifest; writes out_dir (default `default_out_dir`:
  workdir/eval, or workdir/eval/<manifest stem>[_<manifest_split>] for another
  manifest). metrics.json records the checkpoint scored ("checkpoint": stage
  and step) and the sha256 of the workdir's config.json ("config_sha256").

  `text_source` names where the descriptions come from ('text': the manifest's
  column; 'audio' / 'captioner': generated by `describe(samples) -> samples`,
  which `bmqa_jax.experiments.descriptions.for_evaluation` builds from the
  recogniser or captioner). With a generated source a manifest needs no text
  (image-only BMQA, Eq. 16). `manifest_split`: score only the manifest's rows of
  this split (default every row). An unfinished last stage is refused unless
  `allow_unfinished`.
  """
  config_sha256 = config_hash(workdir)  # before loading: the config scored
  cfg, model, variables, tok, ckpt = _load_model(workdir, allow_unfinished)
  has_text = tok is not None
  if not has_text:
    describe = None
  elif text_source != "text" and describe is None:
    raise ValueError(
      f"text_source={text_source!r} needs `describe` (the recogniser "
      "or captioner: bmqa_jax.experiments.descriptions.for_evaluation)"
    )
  if manifest:
    given = has_text and text_source == "text"
    samples = manifest_lib.load(
      manifest,
      require_mos=True,
      require_text=given,
      check_images=cfg.data.check_images,
      splits=[manifest_split] if manifest_split else None,
      skip_bad=cfg.data.skip_bad_rows,
      log=log,
      split_seed=cfg.seed,
    )
    if describe is not None:
      samples = describe(samples)
    name = os.path.basename(manifest) + (f" ({manifest_split})" if manifest_split else "")
  else:
    cfg.data.text_source = text_source
    data = datasets.load(cfg, workdir, (split,), log=log, describe=describe)
    samples = data.splits[split]
    name = f"{split} split of {data.manifest}"
  devices = sorted({s.device for s in samples if s.device})
  records = pipeline.to_records(samples, tok, cfg.input.max_text_len, devices)
  # One pass over each image: a store only where training already prepared one.
  records = prepared.attach(records, pipeline.from_config(cfg), workdir, log, build=False)
  mesh = sharding.make_mesh(cfg)
  # The weights on every device of the mesh (on every process of a cluster).
  variables = jax.device_put(jax.device_get(variables), sharding.replicated(mesh))
  if _tower_frozen(cfg, variables):
    # The training run's cached features serve (every process reads them all).
    pcfg = pipeline.from_config(cfg)
    cache = feature_cache.build(model, variables, records, cfg, pcfg, workdir, mesh, log)
    preds = feature_cache.predict(model, variables, cache, records, cfg, mesh, has_text)
  else:
    preds = predict(model, variables, records, cfg, mesh, has_text)
  mos = np.array([s.mos for s in samples])
  groups = [s.device or "all" for s in samples]
  g = metrics.grouped_summary(preds, mos, groups, mapping=MAPPINGS)
  result = {
    "overall": g["overall"],
    "per_device": g["per_group"] if devices else {},
    "dataset": name,
    "workdir": os.path.abspath(workdir),
    "score_range": list(cfg.data.mos_range),
    "higher_is_better": True,
    "checkpoint": ckpt,
    "config_sha256": config_sha256,
  }
  if manifest:
    result["manifest"] = os.path.abspath(manifest)
  if has_text:
    result["text_source"] = text_source
  out_dir = out_dir or default_out_dir(workdir, manifest, manifest_split)
  if jax.process_index() == 0:  # the same predictions on every process
    write_outputs(out_dir, result, samples, preds)
    if describe is not None:
      write_descriptions(os.path.join(out_dir, "descriptions.csv"), samples, text_source)
  log(format_table(result))
  return result


def format_table(result: dict) -> str:
  """The overall row, then one per device (metrics_report.format_table columns)."""
  rows = [("overall", result["overall"])] + sorted(result["per_device"].items())
  return metrics_report.format_table(rows)


def write_outputs(out_dir: str, result: dict, samples: Sequence, preds) -> None:
  os.makedirs(out_dir, exist_ok=True)
  workdir_lib.atomic_write(
    os.path.join(out_dir, "metrics.json"), json.dumps(result, indent=1, default=float)
  )
  report = (
    f"# BMQA evaluation\n\nDataset: {result['dataset']}\n\n"
    f"Workdir: {result['workdir']}\n\n{format_table(result)}\n\n"
    "SRCC/KRCC and raw PLCC/RMSE on the predictions as they are; "
    "PLCC/RMSE L4 and L5 after the 4- and 5-parameter logistic mapping "
    "(n/c: the fit did not converge). RMSE is on the MOS scale. "
    "![scatter](scatter.png)\n"
  )
  workdir_lib.atomic_write(os.path.join(out_dir, "report.md"), report)
  workdir_lib.atomic_write_csv(
    os.path.join(out_dir, "predictions.csv"),
    [["image", "device", "mos", "prediction"]]
    + [[s.image, s.device, s.mos, f"{p:.5f}"] for s, p in zip(samples, preds)],
  )
  scatter(os.path.join(out_dir, "scatter.png"), samples, preds, result["overall"])


def scatter(path: str, samples, preds, overall: dict) -> None:
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(5, 5), dpi=120)
  ax = fig.subplots()
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
  ax.set_title(
    f"PLCC {overall['plcc']:.3f}  SRCC {overall['srcc']:.3f}  RMSE {overall['rmse']:.3f}"
  )
  if len(devices) > 1:
    ax.legend(fontsize=7)
  fig.tight_layout()
  workdir_lib.atomic_write(path, lambda f: fig.savefig(f, format="png"))


def write_descriptions(path: str, samples: Sequence, source: str) -> None:
  """The generated descriptions a model was scored with: image, audio, text, source."""
  workdir_lib.atomic_write_csv(
    path,
    [["image", "audio", "text", "source"]] + [[s.image, s.audio, s.text, source] for s in samples],
  )
