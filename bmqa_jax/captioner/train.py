"""Training of the QSD captioner F_img2qsd (paper Sec. 5.5.2).

``train_and_evaluate(config, workdir)`` reads a manifest (or the built-in
dataset), builds the word vocabulary from the training descriptions, trains
Show-Attend-Tell with teacher forcing on (image, description) pairs of the
training split (Eq. 15 plus the doubly-stochastic attention penalty) under
``jax.jit`` with the batch sharded over the mesh's ``data`` axis, on the shared
training library (`bmqa_jax.train_lib`: checkpoints, resume (the batches are a
function of the step), the workdir's config and lock, the step loop with its
non-finite stop), and ends with `bmqa_jax.captioner.evaluate` on the
evaluation split, written to ``workdir/eval/captioner_metrics.json`` and
``workdir/eval/captions.csv``.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections

from bmqa_jax import sharding
from bmqa_jax.captioner import evaluate as evaluate_lib
from bmqa_jax.captioner import infer
from bmqa_jax.captioner import model as model_lib
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.data import datasets
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import state as state_lib
from bmqa_jax.train_lib import workdir as workdir_lib


def resolve_manifest(config, log=print) -> str:
  """``config.data.manifest``, or the built-in dataset's (built on first use)."""
  if config.data.kind == "manifest":
    if not config.data.manifest:
      raise ValueError("config.data.kind='manifest' needs config.data.manifest")
    return config.data.manifest
  if config.data.kind != "builtin":
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}")
  cfg = ml_collections.ConfigDict(dict(data=dict(
      kind="builtin", builtin=config.data.builtin.to_dict(),
      builtin_dir=config.data.builtin_dir)))
  return datasets.manifest_paths(cfg, log=log)[0]


def load_split(manifest: str, split: str) -> list[manifest_lib.Sample]:
  """Rows of ``split`` with an image and a non-empty description."""
  return manifest_lib.load(manifest, require_mos=False, require_text=True,
                           check_images=False, splits=[split])


def make_train_step(model, tx, penalty_weight: float, schedule=None):
  """``(state, batch, rng) -> (state, metrics)``: one optimiser step."""

  def train_step(state, batch, rng):
    inputs, targets = batch["caption"][:, :-1], batch["caption"][:, 1:]

    def loss_fn(params):
      mutable = ["batch_stats"] if state["batch_stats"] else False
      out = model.apply(state_lib.variables(dict(state, params=params)),
                        batch["image"], inputs, train=True, mutable=mutable,
                        rngs={"dropout": jax.random.fold_in(rng, state["step"])})
      (logits, alphas), updates = out if mutable else (out, {})
      loss, metrics = model_lib.caption_loss(logits, alphas, targets, penalty_weight)
      return loss, (metrics, updates.get("batch_stats", state["batch_stats"]))

    (loss, (metrics, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    return state_lib.apply_gradients(state, grads, tx, stats, dict(metrics, loss=loss),
                                     schedule)

  return train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, log=print,
                       config_change: str = "refuse", progress: bool = False) -> dict:
  """Trains (or resumes) in ``workdir``; returns the evaluation metrics."""
  with workdir_lib.owned(config, workdir, config_change, log,
                         filename=infer.CONFIG_FILE):
    return _train_and_evaluate(config, workdir, log, progress)


def _vocab(workdir: str, train_samples, config) -> vocab_lib.Vocab:
  path = os.path.join(workdir, infer.VOCAB_FILE)
  if os.path.isfile(path):
    return vocab_lib.Vocab.load(path)
  vocab = vocab_lib.Vocab.build([s.text for s in train_samples],  # training texts only
                                config.vocab.min_count)
  if jax.process_index() == 0:
    vocab.save(path)
  return vocab


def _train_and_evaluate(config, workdir: str, log, progress: bool) -> dict:
  manifest = resolve_manifest(config, log)
  train_samples = load_split(manifest, config.data.train_split)
  eval_samples = load_split(manifest, config.data.eval_split)
  vocab = _vocab(workdir, train_samples, config)
  log(f"captioner: {len(train_samples)} training, {len(eval_samples)} "
      f"{config.data.eval_split} descriptions, {len(vocab)} words")

  mesh = sharding.make_mesh(config)
  sharding.check_batch(config.batch_size, mesh, "config.batch_size")
  model = model_lib.from_config(config, len(vocab))
  schedule = optim.make_schedule(config.optimizer, config.num_steps,
                                 config.optimizer.warmup_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  train_records = evaluate_lib.records(train_samples, vocab, config.vocab.max_len)

  def init(rng):
    v = model_lib.init_variables(model, config, rng)
    return state_lib.create(v["params"], v.get("batch_stats", {}), tx)

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.state_sharding(abstract, mesh, sharding.min_shard_size(config))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  mngr = checkpoint.manager(ckpt_dir, config.checkpoint_keep)
  latest = mngr.latest_step()
  if latest is not None:
    state = checkpoint.restore(ckpt_dir, latest, checkpoint.abstract(abstract, shardings))
    log(f"captioner: resumed at step {latest}")
  else:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  it = iter(pipeline.train_loader(train_records, pipeline.from_config(config),
                                  config.batch_size, config.seed,
                                  start_step=int(latest or 0)))
  log(f"Show-Attend-Tell ({config.model.encoder}): "
      f"{state_lib.count_params(state['params'])} parameters")

  step_fn = sharding.jit_step(
      make_train_step(model, tx, config.loss.attention_penalty, schedule), shardings, mesh)

  def on_log(step, m):
    log(f"captioner step {step}/{config.num_steps} loss {m['loss']:.3f} "
        f"ce {m['cross_entropy']:.3f} penalty {m['attention_penalty']:.3f} "
        f"top5 {100 * m['top5']:.1f}% ({m['steps_per_second']:.2f} steps/s)")

  state, history = loop.run(
      step_fn, state,
      lambda _: sharding.put_batch({k: v for k, v in next(it).items()
                                    if k in ("image", "caption")}, mesh),
      jax.random.key(config.seed + 1), name="captioner", total_steps=config.num_steps,
      mngr=mngr, log_every=config.log_every_steps,
      checkpoint_every=config.checkpoint_every_steps,
      tensorboard_dir=os.path.join(workdir, "tensorboard"), log=log,
      progress=progress, on_log=on_log, prefetch=config.get("device_prefetch", loop.PREFETCH))

  variables = sharding.to_host(state_lib.variables(state))  # every process: all rows
  metrics, captions = evaluate_lib.evaluate(model, variables, vocab, eval_samples, config)
  metrics.update(split=config.data.eval_split, manifest=manifest,
                 step=int(jax.device_get(state["step"])), train_history=history)
  log("captioner eval: " + json.dumps({k: metrics[k] for k in (
      "top5_accuracy", "cross_entropy", "greedy", "beam")}))
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    workdir_lib.atomic_write(os.path.join(out_dir, "captioner_metrics.json"),
                             json.dumps(metrics, indent=1))
    workdir_lib.atomic_write_csv(
        os.path.join(out_dir, "captions.csv"), [["image", "reference", "greedy", "beam"]]
        + [[s.image, s.text, g, b] for s, g, b in captions])
  return metrics


def checkpoint_step(workdir: str) -> int | None:
  """The latest saved step of a captioner workdir (None: none saved)."""
  return checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
