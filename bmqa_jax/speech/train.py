"""Training and evaluation of the CTC recogniser (paper Eq. 2).

``train_and_evaluate(cfg, workdir)`` reads one manifest, featurises its
train and eval splits once (cached in the workdir), trains DeepSpeech2 with
``optax.ctc_loss`` under ``jax.jit`` with the batch sharded over the mesh's
``data`` axis, on the shared training library (`bmqa_jax.train_lib`: one
checkpoint layout and resume, the workdir's config and lock, the step loop with
its non-finite stop), and ends with WER/CER (jiwer) of greedy and beam-search
transcripts of the eval split, written to ``workdir/eval/asr_metrics.json`` and
``workdir/eval/asr_transcripts.csv``.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bmqa_jax import log as log_lib
from bmqa_jax import sharding
from bmqa_jax.data import datasets
from bmqa_jax.speech import data as data_lib
from bmqa_jax.speech import features as features_lib
from bmqa_jax.speech import infer
from bmqa_jax.speech import model as model_lib
from bmqa_jax.speech import text as text_lib
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import setup
from bmqa_jax.train_lib import state as state_lib

__all__ = ["ctc_loss", "make_train_step", "load_split", "train_and_evaluate", "min_ctc_frames"]


def ctc_loss(logits, out_lengths, labels, label_lengths):
  """Per-utterance CTC negative log-likelihood ``-log p(labels | x)`` [B]."""
  logit_paddings = 1.0 - model_lib.frame_mask(out_lengths, logits.shape[1])
  label_paddings = 1.0 - model_lib.frame_mask(label_lengths, labels.shape[1])
  return optax.ctc_loss(
    logits,
    logit_paddings.astype(jnp.float32),
    labels,
    label_paddings.astype(jnp.float32),
    blank_id=text_lib.BLANK,
  )


def load_split(
  manifest: str,
  split: str | None,
  cache_dir: str | None,
  feature_kwargs: dict,
  need_text: bool = True,
  log=log_lib.info,
):
  """(rows, SpeechSet or FeatureCache) of one split (None: every row)."""
  rows = data_lib.read_manifest(manifest)
  if split is not None:
    if rows and "split" not in rows[0]:
      raise ValueError(f"{manifest}: no 'split' column, cannot select split {split!r}")
    rows = [r for r in rows if r.get("split") == split]
    if not rows:
      raise ValueError(f"{manifest}: no rows in split {split!r}")
  rows = [r for r in rows if (r.get("audio") or "").strip()]
  if not rows:
    raise ValueError(f"{manifest}: no rows with audio in split {split!r}")
  paths = data_lib.resolve_audio(manifest, rows)
  feats = features_lib.cached_features(paths, cache_dir, feature_kwargs, progress=log)
  if not need_text:
    return rows, feats
  for n, r in enumerate(rows):
    if not text_lib.normalize(r.get("text") or ""):
      raise ValueError(f"{manifest}: row with audio {r['audio']!r} (#{n}) has no text")
  return rows, data_lib.SpeechSet(feats, [r["text"] for r in rows])


def min_ctc_frames(labels: np.ndarray) -> int:
  """Fewest frames CTC needs for a label sequence: one per label plus a blank
  between each pair of equal neighbours."""
  labels = np.asarray(labels)
  return int(len(labels) + np.sum(labels[1:] == labels[:-1]))


def _warn_unalignable(data: data_lib.SpeechSet, time_strides, log) -> None:
  frames = model_lib.output_lengths(data.features.lengths, time_strides)
  bad = [i for i, lab in enumerate(data.labels) if min_ctc_frames(lab) > frames[i]]
  if bad:
    log(
      f"warning: {len(bad)} of {len(data)} training utterances have more "
      f"characters than output frames (time stride {int(np.prod(time_strides))}) "
      f"and cannot be aligned by CTC, e.g. #{bad[0]}: {data.texts[bad[0]]!r}"
    )


def make_train_step(model, tx, schedule=None):
  """``(state, batch, rng) -> (state, metrics)``: one optimiser step on the
  weighted mean CTC loss of a batch (``weights`` 0 marks filler rows)."""

  def train_step(state, batch, rng):
    def loss_fn(params):
      (logits, out_len), updates = model.apply(
        {"params": params, "batch_stats": state["batch_stats"]},
        batch["features"],
        batch["lengths"],
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.fold_in(rng, state["step"])},
      )
      per_utt = ctc_loss(logits, out_len, batch["labels"], batch["label_lengths"])
      w = batch["weights"]
      return jnp.sum(per_utt * w) / jnp.maximum(jnp.sum(w), 1.0), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    return state_lib.apply_gradients(
      state, grads, tx, updates["batch_stats"], dict(loss=loss), schedule
    )

  return train_step


def _train_and_evaluate(cfg, workdir: str, log, progress: bool) -> dict:
  cache_dir = cfg.data.cache_dir or os.path.join(workdir, "feature_cache")
  fkw = dict(cfg.features)
  manifest = datasets.task_manifest(cfg, log, audio=True)
  t0 = time.time()
  _, train_set = load_split(manifest, cfg.data.train_split, cache_dir, fkw, log=log)
  eval_rows, eval_set = load_split(manifest, cfg.data.eval_split, cache_dir, fkw, log=log)
  log(
    f"features: {len(train_set)} train, {len(eval_set)} eval utterances in {time.time() - t0:.1f}s"
  )

  mesh = sharding.make_mesh(cfg)
  sharding.check_batch(cfg.batch_size, mesh, "config.batch_size")
  model = model_lib.from_config(cfg)
  schedule = optim.make_schedule(cfg.optimizer, cfg.num_steps, cfg.optimizer.warmup_steps)
  tx = optim.make_optimizer(cfg.optimizer, schedule)
  _warn_unalignable(train_set, model.time_strides, log)
  train_ds = data_lib.batch_dataset(
    train_set,
    batch_size=cfg.batch_size,
    frame_buckets=cfg.frame_buckets,
    label_multiple=cfg.label_multiple,
    seed=cfg.seed,
  )

  def init(rng):
    v = model_lib.init_variables(model, cfg, rng)
    return state_lib.create(v["params"], v["batch_stats"], tx)

  start, shardings = setup.one_run(init, cfg, mesh, workdir, name="asr", log=log)
  state = start.state
  log(f"DeepSpeech2: {state_lib.count_params(state['params'])} parameters")

  step_fn = sharding.jit_step(make_train_step(model, tx, schedule), shardings, mesh)

  def on_log(step, m):
    log(
      f"step {step}/{cfg.num_steps} loss {m['loss']:.3f} grad_norm "
      f"{m['grad_norm']:.2f} ({m['steps_per_second']:.2f} steps/s)"
    )

  state, history = setup.run_steps(
    step_fn,
    start,
    lambda step: sharding.put_batch(sharding.local_rows(train_ds[step]), mesh),
    cfg,
    workdir,
    name="asr",
    log=log,
    progress=progress,
    on_log=on_log,
  )

  variables = sharding.to_host(state_lib.variables(state))  # every process decodes all
  t0 = time.time()
  greedy, beam = infer.transcribe(model, variables, eval_set.features, cfg)
  refs = eval_set.texts
  metrics = dict(
    split=cfg.data.eval_split,
    manifest=manifest,
    step=int(jax.device_get(state["step"])),
    train_loss=[(h["step"], h["loss"]) for h in history],
    greedy=infer.evaluate_transcripts(refs, greedy),
    beam=infer.evaluate_transcripts(refs, beam),
    decode_seconds=round(time.time() - t0, 2),
  )
  log(f"eval {json.dumps(metrics)}")
  setup.write_eval(
    workdir,
    "asr_metrics.json",
    metrics,
    "asr_transcripts.csv",
    [["audio", "reference", "greedy", "beam"]]
    + [[row["audio"], r, g, b] for row, r, g, b in zip(eval_rows, refs, greedy, beam)],
  )
  return metrics


train_and_evaluate = setup.one_run_trainer(
  _train_and_evaluate, infer.complete_config, infer.CONFIG_FILE
)
