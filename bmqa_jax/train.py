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
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from typing import Any, Callable

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

from bmqa_jax import losses
from bmqa_jax import sharding
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.models import bmqa as bmqa_lib

State = dict[str, Any]


def pipeline_config(cfg: mlc.ConfigDict) -> pipeline.PipelineConfig:
  c = cfg.input
  return pipeline.PipelineConfig(
      image_size=c.image_size, resize_size=c.resize_size,
      crop_scale=tuple(c.crop_scale), crop_ratio=tuple(c.crop_ratio), flip=c.flip,
      max_text_len=c.max_text_len, workers=c.workers, prefetch=c.prefetch)


def param_paths(tree) -> dict[str, Any]:
  return {"/".join(str(k.key) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
  parts.append(optax.adamw(schedule, b1=scfg.adam_b1, b2=scfg.adam_b2,
                           weight_decay=scfg.weight_decay))
  return optax.multi_transform(
      {"train": optax.chain(*parts), "frozen": optax.set_to_zero()}, labels)


class Stage:
  """Everything one stage needs: model, optimiser, steps, jitted functions."""

  def __init__(self, cfg, name, model, mesh, num_train, has_text):
    self.cfg, self.name, self.model, self.mesh = cfg, name, model, mesh
    self.scfg = scfg = cfg[name]
    if scfg.loss == "info_nce" and not has_text:
      raise ValueError(f"stage {name}: InfoNCE needs the text tower "
                       f"(config.model.modalities={cfg.model.modalities})")
    sharding.check_batch(scfg.batch_size, mesh, f"config.{name}.batch_size")
    self.spe = steps_per_epoch(num_train, scfg.batch_size)
    self.total_steps = max(1, int(math.ceil(scfg.epochs * self.spe)))
    self.schedule = make_schedule(scfg, self.spe, self.total_steps)
    self.has_text = has_text

  def dummy_batch(self) -> dict:
    c = self.cfg.input
    b = {"image": jnp.zeros((1, c.image_size, c.image_size, 3), jnp.float32)}
    if self.has_text:
      b["text_ids"] = jnp.zeros((1, c.max_text_len), jnp.int32)
      b["text_mask"] = jnp.ones((1, c.max_text_len), bool)
    return b

  def init_variables(self, rng) -> dict:
    b = self.dummy_batch()
    return self.model.init({"params": rng, "dropout": rng}, b["image"],
                           b.get("text_ids"), b.get("text_mask"), train=False)

  def setup_optimizer(self, params):
    regex = self.scfg.trainable
    labels = trainable_labels(params, regex)
    if not self.cfg.model.learn_temperature:
      labels = dict(labels, log_temperature="frozen")
    self.labels = labels
    self.train_image = any(
        lab == "train" for p, lab in param_paths(labels).items()
        if p.startswith("image_encoder/"))
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
    elif self.scfg.loss == "mse":
      loss = losses.mse(out["score"], batch["mos"])
    else:
      raise ValueError(f"unknown loss {self.scfg.loss!r}")
    return loss, {"loss": loss, "temperature": tau}

  def train_step(self, state: State, batch: dict, rng) -> tuple[State, dict]:
    has_bs = bool(state["batch_stats"])
    mutable = ["batch_stats"] if has_bs and self.train_image else False

    def loss_fn(params):
      variables = {"params": params}
      if has_bs:
        variables["batch_stats"] = state["batch_stats"]
      res = self.model.apply(
          variables, batch["image"], batch.get("text_ids"), batch.get("text_mask"),
          train=True, train_image=self.train_image,
          rngs={"dropout": jax.random.fold_in(rng, state["step"])}, mutable=mutable)
      out, upd = res if mutable else (res, {})
      loss, metrics = self.loss_and_metrics(out, batch)
      return loss, (upd.get("batch_stats", state["batch_stats"]), metrics)

    (_, (bs, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["learning_rate"] = self.schedule(state["step"])
    return dict(step=state["step"] + 1, params=params, batch_stats=bs,
                opt_state=opt_state), metrics

  def jit_train_step(self, state_sharding):
    rep = sharding.replicated(self.mesh)
    return jax.jit(self.train_step,
                   in_shardings=(state_sharding, sharding.batch_sharding(self.mesh), rep),
                   out_shardings=(state_sharding, rep), donate_argnums=(0,))


def _model_inputs(batch: dict, has_text: bool) -> dict:
  keys = ["image", "mos"] + (["text_ids", "text_mask"] if has_text else [])
  return {k: batch[k] for k in keys}


def checkpoint_manager(workdir: str, stage: str, keep: int) -> ocp.CheckpointManager:
  path = os.path.abspath(os.path.join(workdir, "checkpoints", stage))
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=False,
          cleanup_tmp_directories=True),
      item_names=("state", "data_iter"))


def abstract(tree, shard):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard),
                      tree)


def load_image_init(path: str, variables: dict) -> dict:
  """Puts converted image-tower weights (launch/convert_weights.py) into the model."""
  restored = ocp.StandardCheckpointer().restore(os.path.abspath(path))
  out = flax.core.unfreeze(variables)
  for col in ("params", "batch_stats"):
    have = out.get(col, {}).get("image_encoder")
    new = restored.get(col)
    if have is None and new is None:
      continue
    if have is None or new is None:
      raise ValueError(f"image init {path!r}: collection {col!r} is present in "
                       f"{'the checkpoint' if new is not None else 'the model'} only")
    want, got = param_paths(have), param_paths(new)
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [f"{k}: model {want[k].shape} vs file {np.shape(got[k])}"
              for k in set(want) & set(got) if tuple(want[k].shape) != np.shape(got[k])]
    if missing or extra or shapes:
      raise ValueError(f"image init {path!r} does not match the model's image "
                       f"tower ({col}): missing {missing[:5]}, unexpected "
                       f"{extra[:5]}, mis-shaped {shapes[:5]}")
    out[col]["image_encoder"] = jax.tree.map(
        lambda a, b: jnp.asarray(b, a.dtype), have, new)
  return out


def train_and_evaluate(cfg: mlc.ConfigDict, workdir: str, log=print,
                       progress: bool = True) -> dict:
  """Runs every stage of `cfg.stages` in `workdir` (resuming), returns val metrics."""
  os.makedirs(workdir, exist_ok=True)
  _save_config(cfg, workdir)
  mesh = sharding.make_mesh(cfg)
  names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  needed = {"pretrain" if cfg[n].data == "pretrain" else "train" for n in names}
  needed |= {"val"} if any(cfg[n].eval_split for n in names) else set()
  data = datasets.load(cfg, workdir, tuple(sorted(needed)), log=log)
  has_text = datasets.uses_text(cfg)
  vocab = data.tokenizer.vocab_size if data.tokenizer else None
  model = bmqa_lib.from_config(cfg, vocab)
  pcfg = pipeline_config(cfg)
  rep = sharding.replicated(mesh)

  results = {}
  prev: Stage | None = None
  for name in names:
    split = "pretrain" if cfg[name].data == "pretrain" else "train"
    records = data.records(split, cfg)
    stage = Stage(cfg, name, model, mesh, len(records), has_text)
    mngr = checkpoint_manager(workdir, name, cfg[name].keep_checkpoints)
    loader = pipeline.train_loader(records, pcfg, cfg[name].batch_size,
                                   seed=cfg.seed + names.index(name))
    it = iter(loader)
    init_fn = jax.jit(stage.init_variables, out_shardings=rep)
    variables_shape = jax.eval_shape(init_fn, jax.random.key(cfg.seed))
    state_shape = jax.eval_shape(lambda v: stage.init_state(v), variables_shape)
    state_sharding = jax.tree.map(lambda _: rep, state_shape)
    stage.state_shape = state_shape
    latest = mngr.latest_step()
    if latest is not None:
      restored = mngr.restore(latest, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract(state_shape, rep)),
          data_iter=grain.checkpoint.CheckpointRestore(it)))
      state = restored["state"]
      log(f"[{name}] resumed at step {latest}/{stage.total_steps}"
          if latest < stage.total_steps else f"[{name}] complete, skipping")
    else:
      variables = init_fn(jax.random.key(cfg.seed))
      if cfg[name].init == "previous" and prev is not None:
        variables = _previous_weights(prev, workdir, variables)
        log(f"[{name}] starting from the weights of stage {prev.name}")
      elif cfg.model.image.init:
        variables = load_image_init(cfg.model.image.init, variables)
        log(f"[{name}] image tower initialised from {cfg.model.image.init}")
      state = jax.jit(stage.init_state, out_shardings=state_sharding)(variables)
    _log_params(state["params"], stage, log)
    if int(state["step"]) < stage.total_steps:
      state = _run(stage, state, state_sharding, it, mngr, workdir, log, progress)
    mngr.wait_until_finished()
    if cfg[name].eval_split and cfg[name].loss == "mse":
      from bmqa_jax import evaluate  # pylint: disable=g-import-not-at-top
      preds = evaluate.predict(model, {"params": state["params"],
                                       "batch_stats": state["batch_stats"]},
                               data.records("val", cfg), cfg, mesh, has_text)
      mos = np.array([s.mos for s in data.splits["val"]])
      from bmqa_jax import metrics  # pylint: disable=g-import-not-at-top
      results[name] = metrics.summary(preds, mos)
      log(f"[{name}] validation: " + ", ".join(
          f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
          for k, v in results[name].items()))
    prev = stage
  return results


def _previous_weights(prev: Stage, workdir: str, variables: dict) -> dict:
  """Weights only (params, batch_stats) of `prev`'s last checkpoint."""
  mngr = checkpoint_manager(workdir, prev.name, 1)
  step = mngr.latest_step()
  if step is None:
    raise FileNotFoundError(f"stage {prev.name} has no checkpoint to hand over")
  rep = sharding.replicated(prev.mesh)
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract(prev.state_shape, rep))))
  st = restored["state"]
  out = dict(variables, params=st["params"])
  if "batch_stats" in variables:
    out["batch_stats"] = st["batch_stats"]
  return out


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
    if done % scfg.log_every_steps == 0 or done == stage.total_steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      if not math.isfinite(m["loss"]):
        raise FloatingPointError(f"[{stage.name}] loss is {m['loss']} at step {done}; "
                                 "lower the learning rate or check the data")
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


def _log_params(params, stage: Stage, log) -> None:
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  n_train = sum(int(np.prod(x.shape)) for x, lab in zip(
      jax.tree.leaves(params), jax.tree.leaves(stage.labels)) if lab == "train")
  log(f"[{stage.name}] {n / 1e6:.2f} M parameters ({n_train / 1e6:.2f} M trained), "
      f"{stage.total_steps} steps of batch {stage.scfg.batch_size} "
      f"({stage.spe} steps/epoch)")


def _save_config(cfg: mlc.ConfigDict, workdir: str) -> None:
  path = os.path.join(workdir, "config.json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(cfg.to_json_best_effort(indent=1))
  os.replace(tmp, path)


def load_config(workdir: str) -> mlc.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} holds no config.json: is it a training "
                            "workdir?")
  with open(path) as f:
    return mlc.ConfigDict(json.load(f))


def dry_run(cfg: mlc.ConfigDict, workdir: str, log=print) -> dict[str, int]:
  """Builds the model and one batch of the first stage; prints counts and shapes."""
  mesh = sharding.make_mesh(cfg)
  names = [s.strip() for s in cfg.stages.split(",") if s.strip()]
  data = datasets.load(cfg, workdir, ("pretrain" if cfg[names[0]].data == "pretrain"
                                      else "train",), log=log)
  has_text = datasets.uses_text(cfg)
  model = bmqa_lib.from_config(cfg, data.tokenizer.vocab_size if has_text else None)
  split = next(iter(data.splits))
  stage = Stage(cfg, names[0], model, mesh, len(data.splits[split]), has_text)
  shapes = jax.eval_shape(stage.init_variables, jax.random.key(0))
  counts = {}
  for top, sub in shapes["params"].items():
    counts[top] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))
  for k, v in counts.items():
    log(f"  {k:<16} {v / 1e6:10.3f} M")
  log(f"  {'total':<16} {sum(counts.values()) / 1e6:10.3f} M parameters")
  loader = pipeline.train_loader(data.records(split, cfg), pipeline_config(cfg),
                                 cfg[names[0]].batch_size, seed=cfg.seed)
  batch = next(iter(loader))
  for k, v in batch.items():
    log(f"  batch[{k!r}]: {v.dtype} {tuple(v.shape)}")
  return counts
