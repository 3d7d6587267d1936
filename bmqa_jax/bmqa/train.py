"""One trainer for every stage of BMQA (paper Sec. 4.4, 5.1.3).

`train_and_evaluate(cfg, workdir)` runs the stages named in `config.stages`
in order. Stages differ only in their sub-config: the loss (InfoNCE of Eq. 11–13
for PT and SS, MSE of Eq. 14 for ST), the data (caption pairs or the manifest's
training split), the optimiser schedule, and which parameters train; each is
planned by `bmqa_jax.bmqa.stage.make_stage`.

Each stage keeps its checkpoints in `workdir/checkpoints/<stage>`
(`bmqa_jax.train_lib.checkpoint`: the whole train state). A stage whose last
step is saved is complete and is skipped; a stage with an earlier checkpoint
resumes from it, its data from that step (`pipeline.train_loader`: the batches
are a function of the step); a new stage starts from the
previous stage's weights only (params and batch statistics, not the
optimiser), so running the same command again continues where it stopped.

A workdir owns its config and one run at a time holds it
(`bmqa_jax.train_lib.workdir`); every step is checked for a finite loss and
finite weights, and no non-finite state is ever saved (`train_lib.loop`).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import ml_collections as mlc
import numpy as np

from bmqa_jax import config_bases
from bmqa_jax import log as log_lib
from bmqa_jax import metrics as metrics_lib
from bmqa_jax import pytree
from bmqa_jax import sharding
from bmqa_jax.bmqa import evaluate
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import ridge as ridge_lib
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.models.image import pretrained
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop
from bmqa_jax.train_lib import setup
from bmqa_jax.train_lib import state as state_lib
from bmqa_jax.train_lib import workdir as workdir_lib


def train_and_evaluate(
  cfg: mlc.ConfigDict,
  workdir: str,
  *,
  log=log_lib.info,
  progress: bool = False,
  config_change: str = "refuse",
  describe: Callable | None = None,
) -> dict:
  """Runs every stage of `config.stages` in `workdir` (resuming), returns val metrics.

  The three trainers share this signature (`bmqa_jax.speech.train`,
  `bmqa_jax.captioner.train`): `log` takes each line a run reports; `progress`
  shows a progress bar per stage; `config_change`: 'refuse' (default) raises
  `ConfigChangedError` when `cfg` differs from the workdir's `config.json` in a
  field outside
  `SAFE_CONFIG_CHANGES`; 'allow' trains on with `cfg`, records it as the
  workdir's config and appends the changes to `config_changes.jsonl`.
  `describe`: fills generated descriptions when `config.data.text_source` is
  'audio' or 'captioner' (`bmqa_jax.experiments.descriptions.describer`).
  """
  # Read as today's config (an old config.json given as --config gets the
  # fields added since, once, here), so no reader needs a fall-back default.
  cfg = config_bases.complete(cfg)
  # The data are read and checked first: a failed check leaves nothing in the
  # workdir (a config.json written before it would refuse the corrected config).
  data = load_data(cfg, workdir, stage_lib.stage_names(cfg), log, describe)
  with workdir_lib.owned(cfg, workdir, config_change, log, config_bases.complete):
    return _train_and_evaluate(cfg, workdir, data, log, progress)


def load_data(
  cfg, workdir: str, names: list[str], log, describe=None, val: bool = True
) -> datasets.Data:
  needed = {"pretrain" if cfg[n].data == "pretrain" else "train" for n in names}
  needed |= {"val"} if val and any(cfg[n].eval_split for n in names) else set()
  return datasets.load(
    stage_lib.data_config(cfg, names), workdir, tuple(sorted(needed)), log=log, describe=describe
  )


def _train_and_evaluate(cfg, workdir: str, data: datasets.Data, log, progress) -> dict:
  mesh = sharding.make_mesh(cfg)
  names = stage_lib.stage_names(cfg)
  pcfg = pipeline.from_config(cfg)
  if stage_lib.finished_stages(workdir) is None and jax.process_index() == 0:
    workdir_lib.atomic_write(os.path.join(workdir, stage_lib.STAGES_FILE), "{}")
  results = {}
  prev: stage_lib.StagePlan | None = None
  for i, name in enumerate(names):
    plan = stage_lib.for_data(cfg, name, data, mesh)
    records = data.records(plan.split, cfg)
    start = setup.restore_or_initialise(
      os.path.join(workdir, "checkpoints", name),
      cfg[name].keep_checkpoints,
      plan.abstract_state,
      plan.state_sharding,
      functools.partial(_initial_state, plan, prev, workdir, log),
      name=name,
      total_steps=plan.total_steps,
      log=log,
    )
    state, done = start.state, start.done
    weights = {"params": state["params"], "batch_stats": state["batch_stats"]}
    seed = cfg.seed + i
    if plan.uses_cache and not done:
      cache = feature_cache.build(plan.model, weights, records, plan.cfg, pcfg, workdir, mesh, log)
      loader = feature_cache.train_loader(
        records, cache, pcfg, cfg[name].batch_size, seed, start_step=start.step
      )
      if start.step == 0 and "ridge" in state["params"]:
        state = _fit_ridge(state, plan.model, cache, data.splits[plan.split], name, log)
    elif not done and "ridge" in state["params"] and cfg[name].init != "previous":
      raise ValueError(
        f"stage {name}: config.model.ridge_weight > 0 needs the frozen "
        f"tower's feature cache (config.{name}.feature_cache=True and "
        "trainable leaving the image tower out)"
      )
    else:
      loader = pipeline.train_loader(
        records, pcfg, cfg[name].batch_size, seed=seed, start_step=start.step
      )
    it = iter(loader)
    _log_params(plan, log)
    if not done:
      state, _ = loop.run(
        plan.jit_train_step(),
        state,
        lambda _: sharding.put_batch(plan.model_inputs(next(it)), mesh),
        jax.random.key(cfg.seed + 1),
        name=name,
        total_steps=plan.total_steps,
        mngr=start.mngr,
        log_every=cfg[name].log_every_steps,
        checkpoint_every=cfg[name].checkpoint_every_steps,
        tensorboard_dir=loop.tensorboard_dir(workdir, name),
        log=log,
        progress=progress,
        prefetch=cfg.device_prefetch,
      )
    stage_lib.mark_finished(workdir, name, plan.total_steps)
    if cfg[name].eval_split and cfg[name].loss == "mse":
      results[name] = _validate(plan, state, data, cfg, workdir, log)
    prev = plan
  return results


def _initial_state(plan, prev, workdir: str, log) -> dict:
  cfg, name = plan.cfg, plan.name
  vshard = sharding.state_sharding(plan.abstract_variables, plan.mesh, sharding.min_shard_size(cfg))
  variables = jax.jit(plan.init_variables, out_shardings=vshard)(jax.random.key(cfg.seed))
  if cfg[name].init == "previous" and prev is not None:
    variables, fresh = previous_weights(prev, workdir, variables)
    log(f"[{name}] starting from the weights of stage {prev.name}")
    if fresh:
      log(f"[{name}] freshly initialised (not handed over): {', '.join(fresh)}")
  elif path := pretrained.resolve(cfg.model.image.name, cfg.model.image.init, log):
    variables = pretrained.load_into(path, variables)
    log(f"[{name}] image tower initialised from {path}")
  return jax.jit(plan.init_state, out_shardings=plan.state_sharding)(variables)


def _fit_ridge(state: dict, model, cache: feature_cache.FeatureCache, samples, name: str, log):
  """`state` with the ridge probe (`bmqa_jax.bmqa.ridge`) fitted on the cached
  evaluation views of the training split (features averaged over the views,
  as the scores are at evaluation)."""
  kernel, n_eval = model.ridge_kernel, cache.num_eval_views
  x = np.mean(
    [
      np.asarray(ridge_lib.features([a[:, v] for a in cache.levels], kernel, len(model.scales)))
      for v in range(n_eval)
    ],
    0,
  )
  y = np.array([s.mos for s in samples])
  if kernel == "linear":
    params, info = ridge_lib.fit(x, y)
  else:
    params, info = ridge_lib.fit_kernel(x, y, model.ridge_support, model.ridge_dims)
  log(
    f"[{name}] {kernel} ridge probe on {x.shape[1]} pooled features of {len(x)} images: "
    f"penalty {info['alpha']:g}, leave-one-out RMSE {info['loo_rmse']:.4f}"
  )
  old = state["params"]["ridge"]
  # Every process fitted the same numbers (each holds the whole cache); each
  # places its own shards of them (a global array on several processes).
  new = {}
  for k, v in params.items():
    a = np.asarray(v, old[k].dtype).reshape(old[k].shape)
    new[k] = jax.make_array_from_callback(a.shape, old[k].sharding, lambda i, a=a: a[i])
  return dict(state, params=dict(state["params"], ridge=new))


def _validate(plan, state, data, cfg, workdir: str, log) -> dict:
  weights = {"params": state["params"], "batch_stats": state["batch_stats"]}
  val = data.records("val", cfg)
  if plan.uses_cache:  # the tower is frozen: its features of the val images, once
    pcfg = pipeline.from_config(cfg)
    cache = feature_cache.build(plan.model, weights, val, plan.cfg, pcfg, workdir, plan.mesh, log)
    preds = feature_cache.predict(
      plan.model, weights, cache, val, plan.cfg, plan.mesh, plan.has_text
    )
  else:
    preds = evaluate.predict(plan.model, weights, val, cfg, plan.mesh, plan.has_text)
  mos = np.array([s.mos for s in data.splits["val"]])
  result = metrics_lib.summary(preds, mos)
  log(
    f"[{plan.name}] validation: "
    + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items())
  )
  return result


def previous_weights(
  prev: stage_lib.StagePlan, workdir: str, variables: dict
) -> tuple[dict, list[str]]:
  """`variables` with the weights of `prev`'s last checkpoint where they fit.

  Weights only (params, batch statistics; not the optimiser). Every top-level
  module both stages' models have with the same shapes (image_encoder,
  img_align, text_encoder, txt_align, log_temperature, ...) is handed over; the
  rest keeps its fresh initialisation (e.g. the fusion probe of an image-only
  ST after a two-tower SS, whose input width changed) and is returned by name.
  """
  rep = sharding.replicated(prev.mesh)
  have, _ = checkpoint.load_weights(
    os.path.join(workdir, "checkpoints", prev.name),
    checkpoint.abstract(prev.abstract_variables, rep),
  )
  out, fresh = dict(variables), []
  for col in ("params", "batch_stats"):
    if col not in variables:
      continue
    old, new = have.get(col) or {}, dict(variables[col])
    for k in new:
      if k in old and pytree.same_shapes(old[k], new[k]):
        new[k] = old[k]
      else:
        fresh.append(f"{col}/{k} ({'shape changed' if k in old else 'new'})")
    out[col] = new
  return out, fresh


def _log_params(plan, log) -> None:
  shapes = plan.abstract_variables["params"]
  n = state_lib.count_params(shapes)
  n_train = sum(
    int(np.prod(x.shape))
    for x, lab in zip(jax.tree.leaves(shapes), jax.tree.leaves(plan.labels))
    if lab == "train"
  )
  log(
    f"[{plan.name}] {n / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
    f"{plan.total_steps} steps of batch {plan.scfg.batch_size} "
    f"({plan.steps_per_epoch} steps/epoch)"
  )


def dry_run(
  cfg: mlc.ConfigDict, workdir: str, log=log_lib.info, describe: Callable | None = None
) -> dict[str, dict[str, int]]:
  """Plans every stage and reads one batch of its data; prints counts and shapes.

  Nothing is initialised or trained (`make_stage` uses `jax.eval_shape`), so
  even the largest towers cost no memory. Everything a run checks before its
  first step is checked. Returns the parameter count per top-level module for
  each stage.
  """
  mesh = sharding.make_mesh(cfg)
  names = stage_lib.stage_names(cfg)
  data = load_data(cfg, workdir, names, log, describe, val=False)
  log(f"mesh {dict(mesh.shape)} over {jax.device_count()} device(s)")
  out = {}
  for name in names:
    plan = stage_lib.for_data(cfg, name, data, mesh)
    counts = {
      top: state_lib.count_params(sub) for top, sub in plan.abstract_variables["params"].items()
    }
    log(
      f"[{name}] towers {tuple(plan.cfg.model.modalities)}, loss {cfg[name].loss}, "
      f"{plan.total_steps} steps of batch {cfg[name].batch_size} "
      f"({plan.steps_per_epoch} steps/epoch, {plan.accum} microbatch(es) per step)"
    )
    for k, v in counts.items():
      log(f"  {k:<16} {v / 1e6:10.3f} M")
    log(f"  {'total':<16} {sum(counts.values()) / 1e6:10.3f} M parameters")
    loader = pipeline.train_loader(
      data.records(plan.split, cfg), pipeline.from_config(cfg), cfg[name].batch_size, seed=cfg.seed
    )
    for k, v in next(iter(loader)).items():
      log(f"  batch[{k!r}]: {v.dtype} {tuple(v.shape)}")
    out[name] = counts
  return out
