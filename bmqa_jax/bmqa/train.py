"""One trainer for every stage of BMQA (paper Sec. 4.4, 5.1.3).

`train_and_evaluate(config, workdir)` runs the stages named in `config.stages`
in order. Stages differ only in their sub-config: the loss (InfoNCE of Eq. 11–13
for PT and SS, MSE of Eq. 14 for ST), the data (caption pairs or the manifest's
training split), the optimiser schedule, and which parameters train.

Each stage keeps an orbax CheckpointManager in `workdir/checkpoints/<stage>`
holding the whole train state (params, batch statistics, optimiser state, step)
and the grain iterator state. A stage whose last step is saved is complete and is
skipped; a stage with an earlier checkpoint resumes from it; a new stage starts
from the previous stage's weights only (params and batch statistics, not the
optimiser), so running the same command again continues where it stopped.

A workdir owns its config: the first run writes `config.json`; a later run whose
config differs in anything but the fields of `SAFE_CONFIG_CHANGES` is refused
(`ConfigChangedError`) unless `config_change='allow'`. One run at a time holds
`workdir/.lock`. Every step is checked for a finite loss and finite weights, and
no non-finite state is ever saved.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import socket
import tempfile
import time
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from tensorboardX import SummaryWriter

from bmqa_jax.bmqa import feature_cache
from bmqa_jax import losses
from bmqa_jax import sharding
from bmqa_jax.data import categories
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.bmqa import model as bmqa_lib
from bmqa_jax.bmqa import pretrain
from bmqa_jax.models.image import pretrained

State = dict[str, Any]
# config.<stage>.loss: Eq. 11–13 (PT strategy FM, SS), Eq. 14 (ST), PT CL and RE.
LOSSES = ("info_nce", "mse", "classify", "restore")


param_paths = pretrained.param_paths


def trainable_labels(params, regex: str):
  """'train'/'frozen' per parameter from a regex over 'module/sub/param' paths."""
  paths = param_paths(params)
  hits = {p for p in paths if re.fullmatch(regex, p)}
  if not hits:
    raise ValueError(f"trainable regex {regex!r} matches no parameter; examples: "
                     f"{sorted(paths)[:5]}")
  flat = jax.tree_util.tree_flatten_with_path(params)
  labels = ["train" if "/".join(str(k.key) for k in path) in hits else "frozen"
            for path, _ in flat[0]]
  return jax.tree_util.tree_unflatten(flat[1], labels)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
  return max(1, num_samples // batch_size)


def make_schedule(scfg: mlc.ConfigDict, spe: int, total: int) -> optax.Schedule:
  warm = int(round(scfg.warmup_epochs * spe))
  if scfg.schedule == "constant":
    main = optax.constant_schedule(scfg.learning_rate)
  elif scfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(scfg.learning_rate, max(1, total - warm))
  elif scfg.schedule == "piecewise":
    main = optax.piecewise_constant_schedule(
        scfg.learning_rate,
        {int(round(e * spe)) - warm: scfg.decay_factor
         for e in scfg.decay_boundaries_epochs})
  else:
    raise ValueError(f"unknown schedule {scfg.schedule!r}")
  if not warm:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, scfg.learning_rate, warm), main], [warm])


def make_optimizer(scfg, schedule, labels) -> optax.GradientTransformation:
  parts = []
  if scfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(scfg.grad_clip_norm))
  if scfg.optimizer == "adamw":
    parts.append(optax.adamw(schedule, b1=scfg.adam_b1, b2=scfg.adam_b2,
                             weight_decay=scfg.weight_decay))
  elif scfg.optimizer == "sgd":
    parts.append(optax.sgd(schedule, momentum=scfg.momentum or None))
  else:
    raise ValueError(f"unknown optimizer {scfg.optimizer!r}: 'adamw' or 'sgd'")
  return optax.multi_transform(
      {"train": optax.chain(*parts), "frozen": optax.set_to_zero()}, labels)


class Stage:
  """Everything one stage needs: model, optimiser, steps, jitted functions."""

  def __init__(self, cfg, name, model, mesh, num_train, has_text):
    self.cfg, self.name, self.model, self.mesh = cfg, name, model, mesh
    self.scfg = scfg = cfg[name]
    if scfg.loss not in LOSSES:
      raise ValueError(f"config.{name}.loss={scfg.loss!r}: unknown; known: {LOSSES}")
    if scfg.loss == "info_nce" and set(cfg.model.modalities) != {"image", "text"}:
      raise ValueError(f"stage {name}: InfoNCE needs the image and the text tower "
                       f"(config.model.modalities={cfg.model.modalities})")
    if scfg.loss == "classify" and not categories.for_config(cfg):
      raise ValueError(f"stage {name}: loss 'classify' needs object categories: "
                       "set config.pretrain.categories (names the captions use)")
    # CL / RE run the pretraining heads (models/pretrain.py); None: no heads.
    self.objective = scfg.loss if scfg.loss in pretrain.OBJECTIVES else None
    self.accum = int(scfg.get("grad_accum_steps", 1))
    sharding.check_batch(scfg.batch_size, mesh, f"config.{name}.batch_size",
                         self.accum)
    self.spe = steps_per_epoch(num_train, scfg.batch_size)
    self.total_steps = max(1, int(math.ceil(scfg.epochs * self.spe)))
    self.schedule = make_schedule(scfg, self.spe, self.total_steps)
    self.has_text = has_text

  def dummy_batch(self) -> dict:
    c = self.cfg.input
    size = pipeline.input_size(pipeline.from_config(self.cfg))
    b = {"image": jnp.zeros((1, size, size, 3), jnp.float32)}
    if self.has_text:
      b["text_ids"] = jnp.zeros((1, c.max_text_len), jnp.int32)
      b["text_mask"] = jnp.ones((1, c.max_text_len), bool)
    return b

  def init_variables(self, rng) -> dict:
    b = self.dummy_batch()
    return self.model.init({"params": rng, "dropout": rng}, b["image"],
                           b.get("text_ids"), b.get("text_mask"), train=False,
                           objective=self.objective)

  def setup_optimizer(self, params):
    regex = self.scfg.trainable
    labels = trainable_labels(params, regex)
    if not self.cfg.model.learn_temperature:
      labels = dict(labels, log_temperature="frozen")
    self.labels = labels
    self.train_image = tower_trains(labels)
    self.tx = make_optimizer(self.scfg, self.schedule, labels)

  def init_state(self, variables) -> State:
    params = variables["params"]
    self.setup_optimizer(params)
    return dict(step=jnp.zeros((), jnp.int32), params=params,
                batch_stats=variables.get("batch_stats", {}),
                opt_state=self.tx.init(params))

  def loss_and_metrics(self, out, batch):
    tmin, tmax = self.cfg.model.temperature_range
    tau = jnp.clip(jnp.exp(out["log_temperature"]), tmin, tmax)
    if self.scfg.loss == "info_nce":
      loss = losses.symmetric_info_nce(out["img"], out["txt"], tau)
    elif self.scfg.loss == "mse" and "member_scores" in out:  # each member's own MSE
      loss = losses.mse(out["member_scores"], batch["mos"][:, None])
    elif self.scfg.loss == "mse":
      loss = losses.mse(out["score"], batch["mos"])
    else:  # 'classify' / 'restore': stage-PT strategies CL / RE (Table 2 f–g)
      loss, parts = pretrain.loss(self.scfg.loss, out, batch, self.cfg.pretrain)
      return loss, dict(parts, loss=loss, temperature=tau)
    return loss, {"loss": loss, "temperature": tau}

  def train_step(self, state: State, batch: dict, rng) -> tuple[State, dict]:
    has_bs = bool(state["batch_stats"])
    mutable = ["batch_stats"] if has_bs and self.train_image else False

    def loss_fn(params, batch_stats, batch, dropout_rng):
      variables = {"params": params}
      if has_bs:
        variables["batch_stats"] = batch_stats
      if self.objective == "restore":  # RE: mask patches and words (Table 2 g)
        batch = pretrain.corrupt(batch, jax.random.fold_in(dropout_rng, 1),
                                 self.cfg.pretrain, "image" in self.cfg.model.modalities,
                                 self.has_text)
      res = self.model.apply(
          variables, batch.get("image"), batch.get("text_ids"), batch.get("text_mask"),
          train=True, train_image=self.train_image, objective=self.objective,
          image_features=feature_cache.batch_features(batch),
          rngs={"dropout": dropout_rng}, mutable=mutable)
      out, upd = res if mutable else (res, {})
      loss, metrics = self.loss_and_metrics(out, batch)
      return loss, (upd.get("batch_stats", batch_stats), metrics)

    grads, bs, metrics = accumulate_gradients(
        loss_fn, state["params"], state["batch_stats"], batch,
        jax.random.fold_in(rng, state["step"]), self.accum, self.mesh)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["learning_rate"] = self.schedule(state["step"])
    # One scalar the host reads every step: no non-finite state is ever saved.
    metrics["finite"] = all_finite((metrics["loss"], params, bs))
    return dict(step=state["step"] + 1, params=params, batch_stats=bs,
                opt_state=opt_state), metrics

  def jit_train_step(self, state_sharding):
    rep = sharding.replicated(self.mesh)
    return jax.jit(self.train_step,
                   in_shardings=(state_sharding, sharding.batch_sharding(self.mesh), rep),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,))


def all_finite(tree) -> jax.Array:
  """Whether every element of every array of `tree` is finite (one bool)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def accumulate_gradients(loss_fn, params, batch_stats, batch: dict, rng,
                         steps: int, mesh) -> tuple[Any, Any, dict]:
  """(gradients, batch_stats, metrics) of `loss_fn` over `steps` microbatches.

  `loss_fn(params, batch_stats, microbatch, rng) -> (loss, (batch_stats,
  metrics))`. Microbatch i holds rows i, i + steps, i + 2·steps, … of the
  global batch, so every device of the `data` axis takes part in each one. The
  gradient is the mean of the microbatch gradients, which equals the full-batch
  gradient for a per-sample mean loss such as the MSE of Eq. 14 (equal
  microbatch sizes). It does not for the InfoNCE of Eq. 11–13, whose negatives
  are then the other pairs of the same microbatch only (a smaller effective
  contrastive batch), nor for BatchNorm, whose training statistics are per
  microbatch (its running averages are updated once per microbatch). Metrics
  are averaged over the microbatches.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (_, (batch_stats, metrics)), grads = grad_fn(params, batch_stats, batch, rng)
    return grads, batch_stats, metrics

  def split(x):
    x = x.reshape((x.shape[0] // steps, steps) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(
        x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")))

  def body(carry, xs):
    acc, bs = carry
    micro, i = xs
    (_, (bs, m)), g = grad_fn(params, bs, micro, jax.random.fold_in(rng, i))
    return (jax.tree.map(jnp.add, acc, g), bs), m

  zeros = jax.tree.map(jnp.zeros_like, params)
  (acc, batch_stats), ms = jax.lax.scan(
      body, (zeros, batch_stats), (jax.tree.map(split, batch), jnp.arange(steps)))
  grads = jax.tree.map(lambda g: g / steps, acc)
  return grads, batch_stats, jax.tree.map(lambda m: m.mean(0), ms)


def _model_inputs(batch: dict, has_text: bool) -> dict:
  keys = ["image", "mos"] + (["text_ids", "text_mask"] if has_text else [])
  keys += ["labels"] if "labels" in batch else []  # CL targets of caption pairs
  keys += [k for k in batch if k.startswith("feat_")]  # cached tower features
  return {k: batch[k] for k in keys if k in batch}


def checkpoint_manager(workdir: str, stage: str, keep: int) -> ocp.CheckpointManager:
  path = os.path.abspath(os.path.join(workdir, "checkpoints", stage))
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=False,
          cleanup_tmp_directories=True),
      item_names=("state", "data_iter"))


def abstract(tree, shard):
  """ShapeDtypeStructs of `tree` with one sharding or a tree of shardings."""
  if isinstance(shard, jax.sharding.Sharding):
    shard = jax.tree.map(lambda _: shard, tree)
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shard)


def stage_config(cfg: mlc.ConfigDict, name: str) -> mlc.ConfigDict:
  """`cfg` with `config.model.modalities` replaced by the stage's `modalities`."""
  mods = tuple(cfg[name].get("modalities", ()) or ())
  if not mods or mods == tuple(cfg.model.modalities):
    return cfg
  unknown = set(mods) - {"image", "text"}
  if unknown:
    raise ValueError(f"config.{name}.modalities={mods}: unknown {sorted(unknown)}")
  c = cfg.copy_and_resolve_references()
  c.model.modalities = mods
  return c


def data_config(cfg: mlc.ConfigDict, names: list[str]) -> mlc.ConfigDict:
  """`cfg` whose modalities are those of all stages together (what to read)."""
  used = set()
  for n in names:
    used |= set(stage_config(cfg, n).model.modalities)
  mods = tuple(m for m in ("image", "text") if m in used)
  if mods == tuple(cfg.model.modalities):
    return cfg
  c = cfg.copy_and_resolve_references()
  c.model.modalities = mods
  return c


def train_and_evaluate(cfg: mlc.ConfigDict, workdir: str, log=print,
                       progress: bool = True, config_change: str = "refuse") -> dict:
  """Runs every stage of `cfg.stages` in `workdir` (resuming), returns val metrics.

  `config_change`: 'refuse' (default) raises `ConfigChangedError` when `cfg`
  differs from the workdir's `config.json` in a field outside
  `SAFE_CONFIG_CHANGES`; 'allow' trains on with `cfg`, records it as the
  workdir's config and appends the changes to `config_changes.jsonl`.
  """
  if config_change not in ("refuse", "allow"):
    raise ValueError(f"config_change={config_change!r}: 'refuse' or 'allow'")
  os.makedirs(workdir, exist_ok=True)
  lock = WorkdirLock(workdir, log) if jax.process_index() == 0 else None
  if lock:
    lock.acquire()
  try:
    _own_config(cfg, workdir, config_change, log)
    return _train_and_evaluate(cfg, workdir, log, progress)
  finally:
    if lock:
      lock.release()


def _train_and_evaluate(cfg: mlc.ConfigDict, workdir: str, log, progress) -> dict:
  mesh = sharding.make_mesh(cfg)
  names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  needed = {"pretrain" if cfg[n].data == "pretrain" else "train" for n in names}
  needed |= {"val"} if any(cfg[n].eval_split for n in names) else set()
  data = datasets.load(data_config(cfg, names), workdir, tuple(sorted(needed)),
                       log=log)
  vocab = data.tokenizer.vocab_size if data.tokenizer else None
  pcfg = pipeline.from_config(cfg)
  min_size = cfg.mesh.get("shard_min_size", 2**18)

  results = {}
  prev: Stage | None = None
  for name in names:
    split = "pretrain" if cfg[name].data == "pretrain" else "train"
    records = data.records(split, cfg)
    scfg = stage_config(cfg, name)  # the model of this stage (its modalities)
    has_text = datasets.uses_text(scfg)
    model = bmqa_lib.from_config(scfg, vocab)
    stage = Stage(scfg, name, model, mesh, len(records), has_text)
    mngr = checkpoint_manager(workdir, name, cfg[name].keep_checkpoints)
    variables_shape = jax.eval_shape(stage.init_variables, jax.random.key(cfg.seed))
    init_fn = jax.jit(stage.init_variables, out_shardings=sharding.state_sharding(
        variables_shape, mesh, min_size))
    state_shape = jax.eval_shape(lambda v: stage.init_state(v), variables_shape)
    state_sharding = sharding.state_sharding(state_shape, mesh, min_size)
    stage.state_shape = state_shape
    latest = mngr.latest_step()
    if latest is not None:
      state = mngr.restore(latest, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract(state_shape, state_sharding))))["state"]
      log(f"[{name}] resumed at step {latest}/{stage.total_steps}"
          if latest < stage.total_steps else f"[{name}] complete, skipping")
    else:
      variables = init_fn(jax.random.key(cfg.seed))
      if cfg[name].init == "previous" and prev is not None:
        variables, fresh = _previous_weights(prev, workdir, variables)
        log(f"[{name}] starting from the weights of stage {prev.name}")
        if fresh:
          log(f"[{name}] freshly initialised (not handed over): {', '.join(fresh)}")
      elif path := pretrained.resolve(cfg.model.image.name, cfg.model.image.init, log):
        variables = pretrained.load_into(path, variables)
        log(f"[{name}] image tower initialised from {path}")
      state = jax.jit(stage.init_state, out_shardings=state_sharding)(variables)
    weights = {"params": state["params"], "batch_stats": state["batch_stats"]}
    use_cache = uses_feature_cache(scfg, name, stage.train_image)
    done = latest is not None and latest >= stage.total_steps
    if use_cache and not done:
      cache = feature_cache.build(model, weights, records, scfg, pcfg, workdir, mesh, log)
      loader = feature_cache.train_loader(records, cache, pcfg, cfg[name].batch_size,
                                          seed=cfg.seed + names.index(name))
    else:
      loader = pipeline.train_loader(records, pcfg, cfg[name].batch_size,
                                     seed=cfg.seed + names.index(name))
    it = iter(loader)
    if latest is not None and not done:
      mngr.restore(latest, args=ocp.args.Composite(
          data_iter=grain.checkpoint.CheckpointRestore(it)))
    _log_params(state["params"], stage, log)
    if int(state["step"]) < stage.total_steps:
      state = _run(stage, state, state_sharding, it, mngr, workdir, log, progress)
    mngr.wait_until_finished()
    if cfg[name].eval_split and cfg[name].loss == "mse":
      weights = {"params": state["params"], "batch_stats": state["batch_stats"]}
      val = data.records("val", cfg)
      if use_cache:  # the tower is frozen: its features of the val images, once
        cache = feature_cache.build(model, weights, val, scfg, pcfg, workdir, mesh, log)
        preds = feature_cache.predict(model, weights, cache, val, scfg, mesh, has_text)
      else:
        from bmqa_jax.bmqa import evaluate  # pylint: disable=g-import-not-at-top
        preds = evaluate.predict(model, weights, val, cfg, mesh, has_text)
      mos = np.array([s.mos for s in data.splits["val"]])
      from bmqa_jax import metrics  # pylint: disable=g-import-not-at-top
      results[name] = metrics.summary(preds, mos)
      log(f"[{name}] validation: " + ", ".join(
          f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
          for k, v in results[name].items()))
    prev = stage
  return results


def tower_trains(labels) -> bool:
  """Whether any image-tower parameter is labelled 'train' (`trainable_labels`)."""
  return any(lab == "train" for p, lab in param_paths(labels).items()
             if p.startswith("image_encoder/"))


def uses_feature_cache(cfg: mlc.ConfigDict, name: str, train_image: bool) -> bool:
  """Whether stage `name` trains from cached tower features: it reads images
  of the manifest, freezes the whole image tower (`train_image` False), has no
  pretraining head, and `config.<name>.feature_cache` is on."""
  return (bool(cfg[name].get("feature_cache", True)) and cfg[name].data != "pretrain"
          and "image" in cfg.model.modalities and not train_image
          and cfg[name].loss not in pretrain.OBJECTIVES)


def _previous_weights(prev: Stage, workdir: str,
                      variables: dict) -> tuple[dict, list[str]]:
  """`variables` with the weights of `prev`'s last checkpoint where they fit.

  Weights only (params, batch statistics; not the optimiser). Every top-level
  module both stages' models have with the same shapes (image_encoder,
  img_align, text_encoder, txt_align, log_temperature, ...) is handed over; the
  rest keeps its fresh initialisation (e.g. the fusion probe of an image-only
  ST after a two-tower SS, whose input width changed) and is returned by name.
  """
  mngr = checkpoint_manager(workdir, prev.name, 1)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"stage {prev.name} has no checkpoint to hand over")
  rep = sharding.replicated(prev.mesh)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract(prev.state_shape, rep))))
  st = restored["state"]
  out, fresh = dict(variables), []
  for col in ("params", "batch_stats"):
    if col not in variables:
      continue
    have, new = st.get(col) or {}, dict(variables[col])
    for k in new:
      if k in have and _same_shapes(have[k], new[k]):
        new[k] = have[k]
      else:
        fresh.append(f"{col}/{k} ({'shape changed' if k in have else 'new'})")
    out[col] = new
  return out, fresh


def _same_shapes(a, b) -> bool:
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(tuple(x.shape) == tuple(y.shape)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _run(stage: Stage, state, state_sharding, it, mngr, workdir, log, progress):
  cfg, scfg = stage.cfg, stage.scfg
  step_fn = stage.jit_train_step(state_sharding)
  rng = jax.random.key(cfg.seed + 1)
  writer = SummaryWriter(os.path.join(workdir, "tensorboard", stage.name))
  start = int(state["step"])
  bar = tqdm.tqdm(total=stage.total_steps, initial=start, desc=f"[{stage.name}]",
                  disable=not progress or jax.process_index() != 0,
                  dynamic_ncols=True, mininterval=2.0)
  t0, seen = time.time(), 0
  for step in range(start, stage.total_steps):
    batch = sharding.put_batch(_model_inputs(next(it), stage.has_text), stage.mesh)
    state, metrics = step_fn(state, batch, rng)
    seen += 1
    done = step + 1
    if not bool(jax.device_get(metrics["finite"])):  # a sync of one scalar per step
      bar.close()
      writer.close()
      _non_finite(stage, done, float(jax.device_get(metrics["loss"])), mngr, log)
    if done % scfg.log_every_steps == 0 or done == stage.total_steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      m["steps_per_second"] = seen / max(time.time() - t0, 1e-9)
      for k, v in m.items():
        writer.add_scalar(f"{stage.name}/{k}", v, done)
      bar.set_postfix(loss=f"{m['loss']:.4f}")
      t0, seen = time.time(), 0
    if done % scfg.checkpoint_every_steps == 0 or done == stage.total_steps:
      mngr.save(done, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data_iter=grain.checkpoint.CheckpointSave(it)), force=True)
    bar.update(1)
  bar.close()
  writer.close()
  return state


def _non_finite(stage: Stage, step: int, loss: float, mngr, log) -> None:
  """Raises FloatingPointError for step `step`, whose state is not saved."""
  mngr.wait_until_finished()
  last = mngr.latest_step()
  where = (f"the last finite checkpoint is step {last}" if last is not None else
           "no checkpoint of this stage was saved")
  log(f"[{stage.name}] non-finite loss or weights at step {step} (loss {loss}); "
      f"nothing of it is saved; {where}")
  raise FloatingPointError(
      f"[{stage.name}] non-finite loss or weights at step {step} (loss {loss}); "
      f"{where} (a re-run resumes from there). Lower the learning rate or check the "
      "data; a changed config needs a new workdir or config_change='allow'")


def _log_params(params, stage: Stage, log) -> None:
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_train = sum(int(np.prod(x.shape)) for x, lab in zip(
      jax.tree.leaves(params), jax.tree.leaves(stage.labels)) if lab == "train")
  log(f"[{stage.name}] {n / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
      f"{stage.total_steps} steps of batch {stage.scfg.batch_size} "
      f"({stage.spe} steps/epoch)")


# Config fields a resumed run may change without altering what is trained:
# logging, evaluation and checkpoint cadence, input-pipeline parallelism and
# where features are cached. Patterns (fnmatch) over dotted paths such as
# 'st.log_every_steps'; every other change to a workdir's config is refused
# unless config_change='allow'.
SAFE_CONFIG_CHANGES = (
    "*.log_every_steps",
    "*.checkpoint_every_steps",
    "*.keep_checkpoints",
    "eval.*",
    "input.workers",
    "input.prefetch",
    "data.feature_cache_dir",
    "data.check_images",
)
_ABSENT = "<absent>"


class ConfigChangedError(ValueError):
  """A run's config differs from its workdir's config.json in a field that
  changes what is trained."""


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir's lock."""


def _flatten(tree, prefix: str = "") -> dict[str, Any]:
  """Dotted paths → JSON values; an empty dict is a value of its own."""
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _as_json(cfg) -> dict:
  if isinstance(cfg, mlc.ConfigDict):
    return json.loads(cfg.to_json_best_effort())
  return json.loads(json.dumps(cfg))


def _default_fields(*trees: dict) -> dict[str, Any]:
  """The default of each field: base_config's, and `defaults.stage()`'s for a
  stage the base config lacks (any sub-config with a `loss` and `trainable`)."""
  from bmqa_jax import defaults  # pylint: disable=g-import-not-at-top
  out = _flatten(_as_json(defaults.base_config()))
  stage = _as_json(defaults.stage())
  for tree in trees:
    for k, v in tree.items():
      if isinstance(v, dict) and "loss" in v and "trainable" in v:
        for f, d in _flatten(stage).items():
          out.setdefault(f"{k}.{f}", d)
  return out


def config_changes(old, new) -> list[tuple[str, Any, Any]]:
  """(field, old value, new value) for each field that differs. A field one
  side lacks (a config written before the field existed) counts as its default."""
  old, new = _as_json(old), _as_json(new)
  a, b = _flatten(old), _flatten(new)
  dflt = _default_fields(old, new)
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, dflt.get(k, _ABSENT)), b.get(k, dflt.get(k, _ABSENT))
    if va != vb:
      out.append((k, va, vb))
  return out


def safe_change(field: str) -> bool:
  return any(fnmatch.fnmatchcase(field, p) for p in SAFE_CONFIG_CHANGES)


def _fmt(v) -> str:
  return v if v is _ABSENT else json.dumps(v)


def _own_config(cfg: mlc.ConfigDict, workdir: str, config_change: str, log) -> None:
  """Writes config.json on the first run; refuses a changed config later."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if jax.process_index() == 0:
      _save_config(cfg, workdir)
    return
  with open(path) as f:
    stored = json.load(f)
  changes = config_changes(stored, cfg)
  if not changes:
    return
  text = [f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in changes]
  unsafe = [t for t, (k, _, _) in zip(text, changes) if not safe_change(k)]
  if unsafe and config_change != "allow":
    raise ConfigChangedError(
        f"{workdir!r} was trained with another config; changed: "
        + "; ".join(unsafe) + ". Use a new workdir, or config_change='allow' "
        "(launch/train.py --config_change=allow) to continue with the new one.")
  if unsafe:
    log("config changed (config_change='allow'): " + "; ".join(unsafe))
  safe = [t for t in text if t not in unsafe]
  if safe:
    log("config: changed fields that do not alter training: " + "; ".join(safe))
  if jax.process_index() == 0:
    if unsafe:
      with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
        f.write(json.dumps(dict(time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                changes=[[k, a, b] for k, a, b in changes],
                                previous=stored)) + "\n")
    _save_config(cfg, workdir)


def _save_config(cfg: mlc.ConfigDict, workdir: str) -> None:
  """Writes workdir/config.json atomically (a unique temporary file, renamed)."""
  path = os.path.join(workdir, "config.json")
  fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".config.json.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(cfg.to_json_best_effort(indent=1))
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


class WorkdirLock:
  """`workdir/.lock`, created exclusively, holding this run's host and pid.

  A lock of a process that is gone (same host, pid not alive) is taken over;
  any other held lock refuses the run (`WorkdirLockedError`). A lock written by
  another host cannot be checked: delete it by hand once that run is gone.
  """

  def __init__(self, workdir: str, log=print):
    self.path = os.path.join(workdir, ".lock")
    self.log = log
    self.me = dict(host=socket.gethostname(), pid=os.getpid())
    self.held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(dict(self.me, time=time.strftime("%Y-%m-%dT%H:%M:%S%z")), f)
    return True

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      return None

  def acquire(self) -> None:
    for _ in range(3):
      if self._create():
        self.held = True
        return
      holder = self._holder()
      if holder == {}:  # released meanwhile
        continue
      if holder is None or "pid" not in holder:
        raise WorkdirLockedError(
            f"{self.path} exists but is unreadable: another run may be starting; "
            "delete it if none is")
      host, pid = holder.get("host"), int(holder["pid"])
      if host == self.me["host"] and not _pid_alive(pid):
        self.log(f"taking over the stale lock {self.path} of process {pid} on "
                 f"{host} (no longer running)")
        # Racing takers: each removes the stale file; one wins the O_EXCL create.
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)!r} is in use by process {pid} on host "
          f"{host} ({self.path}); wait for it to finish, or delete the lock if "
          "that run is gone")
    raise WorkdirLockedError(f"could not take {self.path}")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    holder = self._holder()
    if holder and holder.get("pid") == self.me["pid"] and \
        holder.get("host") == self.me["host"]:
      os.remove(self.path)


def load_config(workdir: str) -> mlc.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} holds no config.json: is it a training "
                            "workdir?")
  with open(path) as f:
    return mlc.ConfigDict(json.load(f))


def dry_run(cfg: mlc.ConfigDict, workdir: str, log=print) -> dict[str, dict[str, int]]:
  """Builds every stage's model and one batch of its data; prints counts and shapes.

  Nothing is initialised or trained: parameter counts come from
  `jax.eval_shape`, so even the largest towers cost no memory. Everything a run
  checks before its first step is checked (data, tokenizer, batch sizes against
  the mesh, losses against the towers, trainable regexes). Returns the
  parameter count per top-level module for each stage.
  """
  mesh = sharding.make_mesh(cfg)
  names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  needed = {"pretrain" if cfg[n].data == "pretrain" else "train" for n in names}
  data = datasets.load(data_config(cfg, names), workdir, tuple(sorted(needed)),
                       log=log)
  vocab = data.tokenizer.vocab_size if data.tokenizer else None
  log(f"mesh {dict(mesh.shape)} over {jax.device_count()} device(s)")
  out, traced = {}, {}
  for name in names:
    split = "pretrain" if cfg[name].data == "pretrain" else "train"
    scfg = stage_config(cfg, name)
    has_text = datasets.uses_text(scfg)
    model = bmqa_lib.from_config(scfg, vocab)
    records = data.records(split, cfg)
    stage = Stage(scfg, name, model, mesh, len(records), has_text)
    key = (tuple(scfg.model.modalities), cfg[name].loss)  # same model: traced once
    if key not in traced:
      traced[key] = jax.eval_shape(stage.init_variables, jax.random.key(0))
    shapes = traced[key]
    jax.eval_shape(stage.init_state, shapes)  # checks `trainable` and the optimiser
    counts = {top: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
              for top, sub in shapes["params"].items()}
    log(f"[{name}] towers {tuple(scfg.model.modalities)}, loss {cfg[name].loss}, "
        f"{stage.total_steps} steps of batch {cfg[name].batch_size} "
        f"({stage.spe} steps/epoch, {stage.accum} microbatch(es) per step)")
    for k, v in counts.items():
      log(f"  {k:<16} {v / 1e6:10.3f} M")
    log(f"  {'total':<16} {sum(counts.values()) / 1e6:10.3f} M parameters")
    loader = pipeline.train_loader(records, pipeline.from_config(cfg),
                                   cfg[name].batch_size, seed=cfg.seed)
    for k, v in next(iter(loader)).items():
      log(f"  batch[{k!r}]: {v.dtype} {tuple(v.shape)}")
    out[name] = counts
  return out
