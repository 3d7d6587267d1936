"""Training and evaluation of the CTC recogniser (paper Eq. 2).

``train_and_evaluate(config, workdir)`` reads one manifest, featurises its
train and eval splits once (cached in the workdir), trains DeepSpeech2 with
``optax.ctc_loss`` and Adam under ``jax.jit`` with the batch sharded over all
devices, checkpoints with orbax (resumes from the workdir's latest step), and
ends with WER/CER (jiwer) of greedy and beam-search transcripts of the eval
split, written to ``workdir/eval/asr_metrics.json`` and
``workdir/eval/asr_transcripts.csv``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any

from absl import logging
import flax
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from bmqa_jax.speech import data as data_lib
from bmqa_jax.speech import decode as decode_lib
from bmqa_jax.speech import features as features_lib
from bmqa_jax.speech import model as model_lib
from bmqa_jax.speech import text as text_lib

__all__ = ["CONFIG_FILE", "build_model", "ctc_loss", "create_optimizer",
           "make_train_step", "init_state", "resolve_manifest", "load_split",
           "train_and_evaluate", "transcribe", "evaluate_transcripts"]

CONFIG_FILE = "asr_config.json"


def build_model(config: ml_collections.ConfigDict) -> model_lib.DeepSpeech2:
  m = config.model
  return model_lib.DeepSpeech2(
      conv_features=tuple(m.conv_features),
      conv_kernels=tuple(tuple(k) for k in m.conv_kernels),
      conv_strides=tuple(tuple(s) for s in m.conv_strides),
      rnn_hidden=m.rnn_hidden, rnn_layers=m.rnn_layers, relu_clip=m.relu_clip,
      bn_momentum=m.bn_momentum, dropout_rate=m.dropout_rate,
      rnn_unroll=m.rnn_unroll, dtype=jnp.dtype(m.dtype))


def ctc_loss(logits, out_lengths, labels, label_lengths):
  """Per-utterance CTC negative log-likelihood ``-log p(labels | x)`` [B]."""
  logit_paddings = 1.0 - model_lib.frame_mask(out_lengths, logits.shape[1])
  label_paddings = 1.0 - model_lib.frame_mask(label_lengths, labels.shape[1])
  return optax.ctc_loss(logits, logit_paddings.astype(jnp.float32), labels,
                        label_paddings.astype(jnp.float32), blank_id=text_lib.BLANK)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, o.warmup_steps, max(config.num_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm),
                     optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any


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


def _feature_kwargs(config) -> dict:
  return dict(config.features)


def logits_fn(model):
  """jit'd ``(variables, features, lengths) -> (log_probs, out_lengths)``."""
  @jax.jit
  def fn(variables, feats, lengths):
    logits, out_len = model.apply(variables, feats, lengths, train=False)
    return jax.nn.log_softmax(logits), out_len
  return fn


def transcribe(model, variables, features, config) -> tuple[list[str], list[str]]:
  """Greedy and beam-search transcripts of every utterance of a FeatureCache."""
  fn = logits_fn(model)
  greedy, beam = [""] * len(features), [""] * len(features)
  for idx, feats, lengths in data_lib.feature_batches(
      features, batch_size=config.eval_batch_size, frame_buckets=config.frame_buckets):
    lp, out_len = fn(variables, feats, lengths)
    lp, out_len = np.asarray(lp)[:len(idx)], np.asarray(out_len)[:len(idx)]
    g = decode_lib.greedy_decode(lp, out_len)
    b = decode_lib.beam_decode(lp, out_len, config.decode.beam_width,
                               config.decode.prune_log_prob)
    for k, i in enumerate(idx):
      greedy[i], beam[i] = g[k], b[k]
  return greedy, beam


def evaluate_transcripts(references: list[str], hypotheses: list[str]) -> dict:
  """WER and CER with jiwer (the reference implementation)."""
  import jiwer  # pylint: disable=import-outside-toplevel
  refs = [text_lib.normalize(r) for r in references]
  hyps = [text_lib.normalize(h) for h in hypotheses]
  return dict(wer=float(jiwer.wer(refs, hyps)), cer=float(jiwer.cer(refs, hyps)),
              n=len(refs))


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


def make_train_step(model, tx):
  """jit'd ``(state, batch, rng) -> (state, metrics)``: one Adam step on the
  weighted mean CTC loss of a batch (``weights`` 0 marks filler rows)."""

  @jax.jit
  def train_step(state, batch, rng):
    def loss_fn(params):
      (logits, out_len), updates = model.apply(
          {"params": params, "batch_stats": state.batch_stats},
          batch["features"], batch["lengths"], train=True,
          mutable=["batch_stats"], rngs={"dropout": rng})
      per_utt = ctc_loss(logits, out_len, batch["labels"], batch["label_lengths"])
      w = batch["weights"]
      return jnp.sum(per_utt * w) / jnp.maximum(jnp.sum(w), 1.0), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    upd, opt_state = tx.update(grads, state.opt_state, state.params)
    new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, upd),
                     batch_stats=updates["batch_stats"], opt_state=opt_state)
    return new, dict(loss=loss, grad_norm=optax.tree.norm(grads))

  return train_step


def init_state(model, tx, example_features, example_lengths, rng) -> TrainState:
  variables = model.init(rng, example_features, example_lengths, train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables["batch_stats"], opt_state=tx.init(params))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) in ``workdir``; returns the eval metrics."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2))
  cache_dir = config.data.cache_dir or os.path.join(workdir, "feature_cache")
  fkw = _feature_kwargs(config)
  manifest = resolve_manifest(config)
  t0 = time.time()
  _, train_set = load_split(manifest, config.data.train_split, cache_dir, fkw)
  eval_rows, eval_set = load_split(manifest, config.data.eval_split, cache_dir, fkw)
  logging.info("features: %d train, %d eval utterances in %.1fs",
               len(train_set), len(eval_set), time.time() - t0)

  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated = NamedSharding(mesh, P())
  batch_sharding = NamedSharding(mesh, P("data"))
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                     f"{mesh.size} devices")

  model = build_model(config)
  tx = create_optimizer(config)
  _warn_unalignable(train_set, model.time_strides)
  train_ds = data_lib.batch_dataset(
      train_set, batch_size=config.batch_size, frame_buckets=config.frame_buckets,
      label_multiple=config.label_multiple, seed=config.seed)

  first = train_ds[0]
  init = jax.jit(lambda rng: init_state(model, tx, jnp.zeros_like(first["features"][:1]),
                                        jnp.array(first["lengths"][:1]), rng),
                 out_shardings=replicated)
  rng = jax.random.key(config.seed)
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  manager = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
      max_to_keep=config.checkpoint_keep, create=True))
  if manager.latest_step() is not None:
    # Resume the full state (weights, batch stats, optimizer, step); the
    # target tree comes from eval_shape, so nothing is initialised twice.
    abstract = jax.eval_shape(init, rng)
    abstract = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(
        flax.serialization.to_state_dict(abstract)))
    state = flax.serialization.from_state_dict(abstract, restored)
    logging.info("resumed from step %d", int(state.step))
  else:
    state = init(rng)
  logging.info("DeepSpeech2: %d parameters", model_lib.count_params(state.params))

  train_step = make_train_step(model, tx)

  writer = _summary_writer(workdir)
  rng = jax.random.key(config.seed + 1)
  step = int(state.step)
  t_last, losses, history = time.time(), [], []
  while step < config.num_steps:
    batch = jax.device_put(train_ds[step], batch_sharding)
    state, metrics = train_step(state, batch, jax.random.fold_in(rng, step))
    step += 1
    losses.append(metrics["loss"])
    if step % config.log_every_steps == 0 or step == config.num_steps:
      loss = float(np.mean(jax.device_get(losses)))
      history.append((step, loss))
      logging.info("step %d/%d loss %.3f grad_norm %.2f (%.2fs/step)", step,
                   config.num_steps, loss, float(metrics["grad_norm"]),
                   (time.time() - t_last) / len(losses))
      if writer:
        writer.add_scalar("asr/train_loss", loss, step)
      t_last, losses = time.time(), []
    if step % config.checkpoint_every_steps == 0 or step == config.num_steps:
      manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
  manager.wait_until_finished()

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  t0 = time.time()
  greedy, beam = transcribe(model, variables, eval_set.features, config)
  refs = eval_set.texts
  metrics = dict(split=config.data.eval_split, manifest=manifest,
                 step=step, train_loss=history, greedy=evaluate_transcripts(refs, greedy),
                 beam=evaluate_transcripts(refs, beam),
                 decode_seconds=round(time.time() - t0, 2))
  logging.info("eval %s", json.dumps(metrics))
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "asr_metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  with open(os.path.join(out_dir, "asr_transcripts.csv"), "w", newline="",
            encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["audio", "reference", "greedy", "beam"])
    for row, r, g, b in zip(eval_rows, refs, greedy, beam):
      w.writerow([row["audio"], r, g, b])
  if writer:
    writer.add_scalar("asr/eval_wer_beam", metrics["beam"]["wer"], step)
    writer.close()
  return metrics


def _summary_writer(workdir: str):
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return SummaryWriter(os.path.join(workdir, "tensorboard"))
