"""The plan of one BMQA training stage: a pure, frozen description.

`make_stage(cfg, name, mesh, num_train, vocab_size)` (or `for_data(cfg, name,
data, mesh)`) builds everything a stage is made of
without initialising or training anything (shapes come from `jax.eval_shape`):
the model of the stage's towers, the loss (InfoNCE of Eq. 11–13 for PT and SS,
MSE of Eq. 14 for ST, the PT heads' CL and RE), the schedule and optimiser,
which parameters train (`config.<stage>.trainable`), the abstract state and its
shardings over the mesh. Training (`bmqa_jax.bmqa.train`), `--dry_run` and
`launch/benchmark_train.py` all run on this one plan.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from jax.sharding import Mesh

from bmqa_jax import losses
from bmqa_jax import pytree
from bmqa_jax import sharding
from bmqa_jax.bmqa import feature_cache
from bmqa_jax.bmqa import model as bmqa_model
from bmqa_jax.bmqa import pretrain
from bmqa_jax.data import categories
from bmqa_jax.data import datasets
from bmqa_jax.data import pipeline
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import state as state_lib
from bmqa_jax.train_lib import workdir as workdir_lib

# config.<stage>.loss: Eq. 11–13 (PT strategy FM, SS), Eq. 14 (ST), PT CL and RE.
LOSSES = ("info_nce", "mse", "classify", "restore")


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Everything one stage is made of; its methods are pure functions of it."""

  name: str
  cfg: mlc.ConfigDict  # the run's config, the stage's towers applied
  model: Any  # bmqa_jax.bmqa.model.BMQA
  mesh: Mesh
  has_text: bool
  objective: str | None  # the PT head run ('classify' / 'restore') or None
  accum: int  # microbatches per step (grad_accum_steps)
  steps_per_epoch: int
  total_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  labels: Any  # 'train' / 'frozen' per parameter
  train_image: bool  # whether any image-tower parameter trains
  uses_cache: bool  # trains from cached frozen-tower features
  abstract_variables: Any
  abstract_state: Any
  state_sharding: Any

  @property
  def scfg(self) -> mlc.ConfigDict:
    return self.cfg[self.name]

  @property
  def split(self) -> str:
    return stage_split(self.cfg, self.name)

  def init_variables(self, rng) -> dict:
    return _init_variables(self.model, self.cfg, self.has_text, self.objective, rng)

  def init_state(self, variables) -> dict:
    return state_lib.create(variables["params"], variables.get("batch_stats", {}), self.tx)

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

  def train_step(self, state: dict, batch: dict, rng) -> tuple[dict, dict]:
    """One optimiser step on a global batch (`model_inputs` of a loader batch)."""
    has_bs = bool(state["batch_stats"])
    mutable = ["batch_stats"] if has_bs and self.train_image else False

    def loss_fn(params, batch_stats, batch, dropout_rng):
      variables = {"params": params}
      if has_bs:
        variables["batch_stats"] = batch_stats
      if self.objective == "restore":  # RE: mask patches and words (Table 2 g)
        batch = pretrain.corrupt(
          batch,
          jax.random.fold_in(dropout_rng, 1),
          self.cfg.pretrain,
          "image" in self.cfg.model.modalities,
          self.has_text,
        )
      res = self.model.apply(
        variables,
        batch.get("image"),
        batch.get("text_ids"),
        batch.get("text_mask"),
        train=True,
        train_image=self.train_image,
        objective=self.objective,
        image_features=feature_cache.batch_features(batch),
        rngs={"dropout": dropout_rng},
        mutable=mutable,
      )
      out, upd = res if mutable else (res, {})
      loss, metrics = self.loss_and_metrics(out, batch)
      return loss, (upd.get("batch_stats", batch_stats), metrics)

    grads, bs, metrics = state_lib.accumulate_gradients(
      loss_fn,
      state["params"],
      state["batch_stats"],
      batch,
      jax.random.fold_in(rng, state["step"]),
      self.accum,
      self.mesh,
    )
    return state_lib.apply_gradients(state, grads, self.tx, bs, metrics, self.schedule)

  def jit_train_step(self):
    return sharding.jit_step(self.train_step, self.state_sharding, self.mesh)

  def model_inputs(self, batch: dict) -> dict:
    """The entries of a loader batch the step reads."""
    keys = ["image", "mos"] + (["text_ids", "text_mask"] if self.has_text else [])
    keys += ["labels"] if "labels" in batch else []  # CL targets of caption pairs
    keys += [k for k in batch if k.startswith("feat_")]  # cached tower features
    return {k: batch[k] for k in keys if k in batch}


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


def stage_names(cfg: mlc.ConfigDict) -> list[str]:
  return [s.strip() for s in cfg.stages.split(",") if s.strip()]


def stage_split(cfg: mlc.ConfigDict, name: str) -> str:
  """The split a stage trains on: 'pretrain' (caption pairs) or 'train'."""
  return "pretrain" if cfg[name].data == "pretrain" else "train"


def for_data(cfg: mlc.ConfigDict, name: str, data: datasets.Data, mesh: Mesh) -> StagePlan:
  """`make_stage` on loaded data (`bmqa_jax.data.datasets.load`)."""
  return make_stage(
    cfg,
    name,
    mesh,
    len(data.splits[stage_split(cfg, name)]),
    data.tokenizer.vocab_size if data.tokenizer else None,
  )


def tower_trains(labels) -> bool:
  """Whether any image-tower parameter is labelled 'train' (`trainable_labels`)."""
  return any(
    lab == "train"
    for p, lab in pytree.param_paths(labels).items()
    if p.startswith("image_encoder/")
  )


def uses_feature_cache(cfg: mlc.ConfigDict, name: str, train_image: bool) -> bool:
  """Whether stage `name` trains from cached tower features: it reads images
  of the manifest, freezes the whole image tower (`train_image` False), has no
  pretraining head, and `config.<name>.feature_cache` is on."""
  return (
    bool(cfg[name].get("feature_cache", True))
    and cfg[name].data != "pretrain"
    and "image" in cfg.model.modalities
    and not train_image
    and cfg[name].loss not in pretrain.OBJECTIVES
  )


def stage_labels(cfg: mlc.ConfigDict, name: str, params) -> Any:
  """'train'/'frozen' per parameter of stage `name` (a tree of params or shapes)."""
  labels = optim.trainable_labels(params, cfg[name].trainable)
  if not cfg.model.learn_temperature:
    labels = dict(labels, log_temperature="frozen")
  if "ridge" in labels:  # fitted in closed form (bmqa_jax.bmqa.ridge), never by the optimiser
    labels = dict(labels, ridge=jax.tree.map(lambda _: "frozen", labels["ridge"]))
  return labels


def _init_variables(model, cfg, has_text, objective, rng) -> dict:
  c = cfg.input
  size = pipeline.input_size(pipeline.from_config(cfg))
  b = {"image": jnp.zeros((1, size, size, 3), jnp.float32)}
  if has_text:
    b["text_ids"] = jnp.zeros((1, c.max_text_len), jnp.int32)
    b["text_mask"] = jnp.ones((1, c.max_text_len), bool)
  return model.init(
    {"params": rng, "dropout": rng},
    b["image"],
    b.get("text_ids"),
    b.get("text_mask"),
    train=False,
    objective=objective,
  )


def make_stage(
  cfg: mlc.ConfigDict,
  name: str,
  mesh: Mesh,
  num_train: int,
  vocab_size: int | None = None,
  model=None,
) -> StagePlan:
  """The plan of stage `name` of `cfg` over `num_train` training samples (the
  manifest's training split, or the caption pairs of a PT stage).

  Checks everything a run checks before its first step: the loss against the
  towers, batch sizes against the mesh, the `trainable` regex. `vocab_size`:
  the tokenizer's (text towers). `model`: reuse an already built model of the
  same towers (None: built from the config).
  """
  scfg_all = stage_config(cfg, name)
  scfg = scfg_all[name]
  if scfg.loss not in LOSSES:
    raise ValueError(f"config.{name}.loss={scfg.loss!r}: unknown; known: {LOSSES}")
  if scfg.loss == "info_nce" and set(scfg_all.model.modalities) != {"image", "text"}:
    raise ValueError(
      f"stage {name}: InfoNCE needs the image and the text tower "
      f"(config.model.modalities={scfg_all.model.modalities})"
    )
  if scfg.loss == "classify" and not categories.for_config(scfg_all):
    raise ValueError(
      f"stage {name}: loss 'classify' needs object categories: "
      "set config.pretrain.categories (names the captions use)"
    )
  objective = scfg.loss if scfg.loss in pretrain.OBJECTIVES else None
  accum = int(scfg.get("grad_accum_steps", 1))
  sharding.check_batch(scfg.batch_size, mesh, f"config.{name}.batch_size", accum)
  spe = optim.steps_per_epoch(num_train, scfg.batch_size)
  total = max(1, int(math.ceil(scfg.epochs * spe)))
  schedule = optim.make_schedule(scfg, total, int(round(scfg.warmup_epochs * spe)), spe)
  has_text = datasets.uses_text(scfg_all)
  if model is None:
    model = bmqa_model.from_config(scfg_all, vocab_size)
  abstract_vars = jax.eval_shape(
    lambda k: _init_variables(model, scfg_all, has_text, objective, k), jax.random.key(0)
  )
  labels = stage_labels(scfg_all, name, abstract_vars["params"])
  tx = optim.make_optimizer(scfg, schedule, labels)
  abstract_state = jax.eval_shape(
    lambda v: state_lib.create(v["params"], v.get("batch_stats", {}), tx), abstract_vars
  )
  min_size = sharding.min_shard_size(cfg)
  train_image = tower_trains(labels)
  uses_cache = uses_feature_cache(scfg_all, name, train_image)
  return StagePlan(
    name=name,
    cfg=scfg_all,
    model=model,
    mesh=mesh,
    has_text=has_text,
    objective=objective,
    accum=accum,
    steps_per_epoch=spe,
    total_steps=total,
    schedule=schedule,
    tx=tx,
    labels=labels,
    train_image=train_image,
    uses_cache=uses_cache,
    abstract_variables=abstract_vars,
    abstract_state=abstract_state,
    state_sharding=sharding.state_sharding(abstract_state, mesh, min_size),
  )


STAGES_FILE = "stages.json"


def mark_finished(workdir: str, name: str, total_steps: int) -> None:
  """Records in workdir/stages.json that stage `name` ran all `total_steps`."""
  if jax.process_index() != 0:
    return
  done = finished_stages(workdir) or {}
  if done.get(name) == total_steps:
    return
  done[name] = total_steps
  workdir_lib.atomic_write(os.path.join(workdir, STAGES_FILE), json.dumps(done, indent=1))


def finished_stages(workdir: str) -> dict[str, int] | None:
  """{stage: total steps} of the stages that finished; None for a workdir
  written before this record existed (release 0.1)."""
  path = os.path.join(workdir, STAGES_FILE)
  if not os.path.exists(path):
    return None if os.path.isdir(os.path.join(workdir, "checkpoints")) else {}
  with open(path) as f:
    return json.load(f)
