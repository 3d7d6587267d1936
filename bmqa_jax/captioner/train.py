"""Training of the QSD captioner F_img2qsd (paper Sec. 5.5.2).

``train_and_evaluate(cfg, workdir)`` reads a manifest (or the built-in
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

from bmqa_jax import sharding
from bmqa_jax.captioner import evaluate as evaluate_lib
from bmqa_jax.captioner import infer
from bmqa_jax.captioner import model as model_lib
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.data import datasets
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import setup
from bmqa_jax.train_lib import state as state_lib


def load_split(manifest: str, split: str) -> list[manifest_lib.Sample]:
  """Rows of ``split`` with an image and a non-empty description."""
  return manifest_lib.load(
    manifest, require_mos=False, require_text=True, check_images=False, splits=[split]
  )


def make_train_step(model, tx, penalty_weight: float, schedule=None):
  """``(state, batch, rng) -> (state, metrics)``: one optimiser step."""

  def train_step(state, batch, rng):
    inputs, targets = batch["caption"][:, :-1], batch["caption"][:, 1:]

    def loss_fn(params):
      mutable = ["batch_stats"] if state["batch_stats"] else False
      out = model.apply(
        state_lib.variables(dict(state, params=params)),
        batch["image"],
        inputs,
        train=True,
        mutable=mutable,
        rngs={"dropout": jax.random.fold_in(rng, state["step"])},
      )
      (logits, alphas), updates = out if mutable else (out, {})
      loss, metrics = model_lib.caption_loss(logits, alphas, targets, penalty_weight)
      return loss, (metrics, updates.get("batch_stats", state["batch_stats"]))

    (loss, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    return state_lib.apply_gradients(state, grads, tx, stats, dict(metrics, loss=loss), schedule)

  return train_step


def _vocab(workdir: str, train_samples, cfg) -> vocab_lib.Vocab:
  path = os.path.join(workdir, infer.VOCAB_FILE)
  if os.path.isfile(path):
    return vocab_lib.Vocab.load(path)
  vocab = vocab_lib.Vocab.build(
    [s.text for s in train_samples],  # training texts only
    cfg.vocab.min_count,
  )
  if jax.process_index() == 0:
    vocab.save(path)
  return vocab


def _train_and_evaluate(cfg, workdir: str, log, progress: bool) -> dict:
  manifest = datasets.task_manifest(cfg, log)
  train_samples = load_split(manifest, cfg.data.train_split)
  eval_samples = load_split(manifest, cfg.data.eval_split)
  vocab = _vocab(workdir, train_samples, cfg)
  log(
    f"captioner: {len(train_samples)} training, {len(eval_samples)} "
    f"{cfg.data.eval_split} descriptions, {len(vocab)} words"
  )

  mesh = sharding.make_mesh(cfg)
  sharding.check_batch(cfg.batch_size, mesh, "config.batch_size")
  model = model_lib.from_config(cfg, len(vocab))
  schedule = optim.make_schedule(cfg.optimizer, cfg.num_steps, cfg.optimizer.warmup_steps)
  tx = optim.make_optimizer(cfg.optimizer, schedule)
  train_records = evaluate_lib.records(train_samples, vocab, cfg.vocab.max_len)

  def init(rng):
    v = model_lib.init_variables(model, cfg, rng)
    return state_lib.create(v["params"], v.get("batch_stats", {}), tx)

  start, shardings = setup.one_run(init, cfg, mesh, workdir, name="captioner", log=log)
  state = start.state
  it = iter(
    pipeline.train_loader(
      train_records, pipeline.from_config(cfg), cfg.batch_size, cfg.seed, start_step=start.step
    )
  )
  log(
    f"Show-Attend-Tell ({cfg.model.encoder}): {state_lib.count_params(state['params'])} parameters"
  )

  step_fn = sharding.jit_step(
    make_train_step(model, tx, cfg.loss.attention_penalty, schedule), shardings, mesh
  )

  def on_log(step, m):
    log(
      f"captioner step {step}/{cfg.num_steps} loss {m['loss']:.3f} "
      f"ce {m['cross_entropy']:.3f} penalty {m['attention_penalty']:.3f} "
      f"top5 {100 * m['top5']:.1f}% ({m['steps_per_second']:.2f} steps/s)"
    )

  state, history = setup.run_steps(
    step_fn,
    start,
    lambda _: sharding.put_batch(
      {k: v for k, v in next(it).items() if k in ("image", "caption")}, mesh
    ),
    cfg,
    workdir,
    name="captioner",
    log=log,
    progress=progress,
    on_log=on_log,
  )

  variables = sharding.to_host(state_lib.variables(state))  # every process: all rows
  metrics, captions = evaluate_lib.evaluate(model, variables, vocab, eval_samples, cfg)
  metrics.update(
    split=cfg.data.eval_split,
    manifest=manifest,
    step=int(jax.device_get(state["step"])),
    train_history=history,
  )
  log(
    "captioner eval: "
    + json.dumps({k: metrics[k] for k in ("top5_accuracy", "cross_entropy", "greedy", "beam")})
  )
  setup.write_eval(
    workdir,
    "captioner_metrics.json",
    metrics,
    "captions.csv",
    [["image", "reference", "greedy", "beam"]] + [[s.image, s.text, g, b] for s, g, b in captions],
  )
  return metrics


train_and_evaluate = setup.one_run_trainer(
  _train_and_evaluate, infer.complete_config, infer.CONFIG_FILE
)


def checkpoint_step(workdir: str) -> int | None:
  """The latest saved step of a captioner workdir (None: none saved)."""
  return checkpoint.latest_step(os.path.join(workdir, "checkpoints"))
