"""Training and evaluation of the CTC recogniser (paper Eq. 2).

``train_and_evaluate(config, workdir)`` reads one manifest, featurises its
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

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bmqa_jax import sharding
from bmqa_jax.speech import data as data_lib
from bmqa_jax.speech import features as features_lib
from bmqa_jax.speech import infer
from bmqa_jax.speech import model as model_lib
from bmqa_jax.speech import text as text_lib
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import state as state_lib
from bmqa_jax.train_lib import workdir as workdir_lib

__all__ = ["ctc_loss", "make_train_step", "resolve_manifest", "load_split",
           "train_and_evaluate", "min_ctc_frames"]


def ctc_loss(logits, out_lengths, labels, label_lengths):
  """Per-utterance CTC negative log-likelihood ``-log p(labels | x)`` [B]."""
  logit_paddings = 1.0 - model_lib.frame_mask(out_lengths, logits.shape[1])
  label_paddings = 1.0 - model_lib.frame_mask(label_lengths, labels.shape[1])
  return optax.ctc_loss(logits, logit_paddings.astype(jnp.float32), labels,
                        label_paddings.astype(jnp.float32), blank_id=text_lib.BLANK)


def load_split(manifest: str, split: str | None, cache_dir: str | None,
               feature_kwargs: dict, need_text: bool = True):
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
  feats = features_lib.cached_features(paths, cache_dir, feature_kwargs,
                                       progress=logging.info)
  if not need_text:
    return rows, feats
  for n, r in enumerate(rows):
    if not text_lib.normalize(r.get("text") or ""):
      raise ValueError(f"{manifest}: row with audio {r['audio']!r} (#{n}) has no text")
  return rows, data_lib.SpeechSet(feats, [r["text"] for r in rows])


def resolve_manifest(config: ml_collections.ConfigDict) -> str:
  """The manifest to train on: ``config.data.manifest``, or the built-in
  dataset's (built on first use) when ``config.data.kind == 'builtin'``."""
  if config.data.kind == "manifest":
    if not config.data.manifest:
      raise ValueError("config.data.kind='manifest' needs config.data.manifest")
    return config.data.manifest
  if config.data.kind != "builtin":
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}")
  from bmqa_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from bmqa_jax.data import tts  # pylint: disable=import-outside-toplevel
  if not tts.available():
    raise RuntimeError("the built-in dataset has spoken descriptions only with a "
                       "speech synthesiser: pip install espeakng-loader")
  cfg = ml_collections.ConfigDict(dict(data=dict(
      kind="builtin", builtin=config.data.builtin.to_dict(),
      builtin_dir=config.data.builtin_dir)))
  path, _ = datasets.manifest_paths(cfg, log=logging.info)
  return path


def min_ctc_frames(labels: np.ndarray) -> int:
  """Fewest frames CTC needs for a label sequence: one per label plus a blank
  between each pair of equal neighbours."""
  labels = np.asarray(labels)
  return int(len(labels) + np.sum(labels[1:] == labels[:-1]))


def _warn_unalignable(data: data_lib.SpeechSet, time_strides) -> None:
  frames = model_lib.output_lengths(data.features.lengths, time_strides)
  bad = [i for i, lab in enumerate(data.labels) if min_ctc_frames(lab) > frames[i]]
  if bad:
    logging.warning("%d of %d training utterances have more characters than output "
                    "frames (time stride %d) and cannot be aligned by CTC, e.g. #%d: "
                    "%r", len(bad), len(data), int(np.prod(time_strides)), bad[0],
                    data.texts[bad[0]])


def make_train_step(model, tx, schedule=None):
  """``(state, batch, rng) -> (state, metrics)``: one optimiser step on the
  weighted mean CTC loss of a batch (``weights`` 0 marks filler rows)."""

  def train_step(state, batch, rng):
    def loss_fn(params):
      (logits, out_len), updates = model.apply(
          {"params": params, "batch_stats": state["batch_stats"]},
          batch["features"], batch["lengths"], train=True,
          mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(rng, state["step"])})
      per_utt = ctc_loss(logits, out_len, batch["labels"], batch["label_lengths"])
      w = batch["weights"]
      return jnp.sum(per_utt * w) / jnp.maximum(jnp.sum(w), 1.0), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    return state_lib.apply_gradients(state, grads, tx, updates["batch_stats"],
                                     dict(loss=loss), schedule)

  return train_step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       config_change: str = "refuse", progress: bool = False) -> dict:
  """Trains (or resumes) in ``workdir``; returns the eval metrics."""
  with workdir_lib.owned(config, workdir, config_change, logging.info,
                         filename=infer.CONFIG_FILE):
    return _train_and_evaluate(config, workdir, progress)


def _train_and_evaluate(config, workdir: str, progress: bool) -> dict:
  cache_dir = config.data.cache_dir or os.path.join(workdir, "feature_cache")
  fkw = dict(config.features)
  manifest = resolve_manifest(config)
  t0 = time.time()
  _, train_set = load_split(manifest, config.data.train_split, cache_dir, fkw)
  eval_rows, eval_set = load_split(manifest, config.data.eval_split, cache_dir, fkw)
  logging.info("features: %d train, %d eval utterances in %.1fs",
               len(train_set), len(eval_set), time.time() - t0)

  mesh = sharding.make_mesh(config)
  sharding.check_batch(config.batch_size, mesh, "config.batch_size")
  model = model_lib.from_config(config)
  schedule = optim.make_schedule(config.optimizer, config.num_steps,
                                 config.optimizer.warmup_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  _warn_unalignable(train_set, model.time_strides)
  train_ds = data_lib.batch_dataset(
      train_set, batch_size=config.batch_size, frame_buckets=config.frame_buckets,
      label_multiple=config.label_multiple, seed=config.seed)

  def init(rng):
    v = model_lib.init_variables(model, config, rng)
    return state_lib.create(v["params"], v["batch_stats"], tx)

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  shardings = sharding.state_sharding(abstract, mesh, sharding.min_shard_size(config))
  ckpt_dir = os.path.join(workdir, "checkpoints")
  mngr = checkpoint.manager(ckpt_dir, config.checkpoint_keep)
  latest = mngr.latest_step()
  if latest is not None:  # weights, batch stats, optimiser, step
    state = checkpoint.restore(ckpt_dir, latest, checkpoint.abstract(abstract, shardings))
    logging.info("resumed from step %d", latest)
  else:
    state = jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed))
  logging.info("DeepSpeech2: %d parameters", state_lib.count_params(state["params"]))

  step_fn = sharding.jit_step(make_train_step(model, tx, schedule), shardings, mesh)

  def on_log(step, m):
    logging.info("step %d/%d loss %.3f grad_norm %.2f (%.2f steps/s)", step,
                 config.num_steps, m["loss"], m["grad_norm"], m["steps_per_second"])

  state, history = loop.run(
      step_fn, state,
      lambda step: sharding.put_batch(sharding.local_rows(train_ds[step]), mesh),
      jax.random.key(config.seed + 1), name="asr", total_steps=config.num_steps,
      mngr=mngr, log_every=config.log_every_steps,
      checkpoint_every=config.checkpoint_every_steps,
      tensorboard_dir=os.path.join(workdir, "tensorboard"), log=logging.info,
      progress=progress, on_log=on_log, prefetch=config.get("device_prefetch", loop.PREFETCH))

  variables = sharding.to_host(state_lib.variables(state))  # every process decodes all
  t0 = time.time()
  greedy, beam = infer.transcribe(model, variables, eval_set.features, config)
  refs = eval_set.texts
  metrics = dict(split=config.data.eval_split, manifest=manifest,
                 step=int(jax.device_get(state["step"])),
                 train_loss=[(h["step"], h["loss"]) for h in history],
                 greedy=infer.evaluate_transcripts(refs, greedy),
                 beam=infer.evaluate_transcripts(refs, beam),
                 decode_seconds=round(time.time() - t0, 2))
  logging.info("eval %s", json.dumps(metrics))
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    workdir_lib.atomic_write(os.path.join(out_dir, "asr_metrics.json"),
                             json.dumps(metrics, indent=2))
    workdir_lib.atomic_write_csv(
        os.path.join(out_dir, "asr_transcripts.csv"),
        [["audio", "reference", "greedy", "beam"]] + [
            [row["audio"], r, g, b] for row, r, g, b in zip(eval_rows, refs, greedy, beam)])
  return metrics
