"""Training and evaluation of the QSD captioner F_img2qsd (paper Sec. 5.5.2).

``train_and_evaluate(config, workdir)`` reads a manifest (or the built-in
dataset), builds the word vocabulary from the training descriptions, trains
Show-Attend-Tell with teacher forcing on (image, description) pairs of the
training split (Eq. 15 plus the doubly-stochastic attention penalty) with Adam
under ``jax.jit`` (batch sharded over all devices), checkpoints the full state
and the grain iterator with orbax (a rerun resumes), and ends with the
evaluation split's top-5 word accuracy (teacher forcing) and corpus BLEU-4 of
greedy and beam-search captions (ours and, when installed, sacrebleu's on the
same tokens), written to ``workdir/eval/captioner_metrics.json`` and
``workdir/eval/captions.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time

import grain
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from bmqa_jax.captioner import bleu
from bmqa_jax.captioner import decode as decode_lib
from bmqa_jax.captioner import model as model_lib
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.data import manifest as manifest_lib
from bmqa_jax.data import pipeline

CONFIG_FILE = "captioner_config.json"
VOCAB_FILE = "captioner_vocab.json"


def build_model(config: ml_collections.ConfigDict, vocab_size: int):
  m = config.model
  return model_lib.ShowAttendTell(
      vocab_size=vocab_size, encoder=m.encoder, encoder_kwargs=tuple(sorted(dict(m.encoder_kwargs).items())),
      embed_dim=m.embed_dim, hidden_dim=m.hidden_dim, attention_dim=m.attention_dim,
      dropout_rate=m.dropout_rate)


def create_optimizer(config) -> optax.GradientTransformation:
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, o.warmup_steps, max(config.num_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm),
                     optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


def resolve_manifest(config) -> str:
  """``config.data.manifest``, or the built-in dataset's (built on first use)."""
  if config.data.kind == "manifest":
    if not config.data.manifest:
      raise ValueError("config.data.kind='manifest' needs config.data.manifest")
    return config.data.manifest
  if config.data.kind != "builtin":
    raise ValueError(f"unknown config.data.kind {config.data.kind!r}")
  from bmqa_jax.data import datasets  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict(dict(data=dict(
      kind="builtin", builtin=config.data.builtin.to_dict(),
      builtin_dir=config.data.builtin_dir)))
  return datasets.manifest_paths(cfg, log=print)[0]


def load_split(manifest: str, split: str) -> list[manifest_lib.Sample]:
  """Rows of ``split`` with an image and a non-empty description."""
  return manifest_lib.load(manifest, require_mos=False, require_text=True,
                           check_images=False, splits=[split])


def records(samples, vocab: vocab_lib.Vocab, max_len: int) -> list[dict]:
  ids = vocab.encode([s.text for s in samples], max_len)
  return [dict(path=s.image, index=np.int32(i), caption=ids[i])
          for i, s in enumerate(samples)]


def init_variables(model, config, rng):
  size = config.input.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  inputs = jnp.zeros((1, config.vocab.max_len + 1), jnp.int32)
  return model.init({"params": rng, "dropout": rng}, images, inputs)


def init_state(model, tx, config, rng) -> dict:
  variables = init_variables(model, config, rng)
  return dict(step=jnp.zeros((), jnp.int32), params=variables["params"],
              batch_stats=variables.get("batch_stats", {}),
              opt_state=tx.init(variables["params"]))


def _variables(params, batch_stats) -> dict:
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def make_train_step(model, tx, penalty_weight: float):
  """jit'd ``(state, batch, rng) -> (state, metrics)``: one Adam step."""

  def train_step(state, batch, rng):
    inputs, targets = batch["caption"][:, :-1], batch["caption"][:, 1:]

    def loss_fn(params):
      mutable = ["batch_stats"] if state["batch_stats"] else False
      out = model.apply(_variables(params, state["batch_stats"]), batch["image"],
                        inputs, train=True, mutable=mutable,
                        rngs={"dropout": jax.random.fold_in(rng, state["step"])})
      (logits, alphas), updates = out if mutable else (out, {})
      loss, metrics = model_lib.caption_loss(logits, alphas, targets, penalty_weight)
      return loss, (metrics, updates.get("batch_stats", state["batch_stats"]))

    (loss, (metrics, stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"])
    upd, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new = dict(step=state["step"] + 1, params=optax.apply_updates(state["params"], upd),
               batch_stats=stats, opt_state=opt_state)
    return new, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))

  return jax.jit(train_step, donate_argnums=(0,))


def teacher_forced_metrics(model, variables, recs, config) -> dict:
  """Token-mean cross entropy and top-5 word accuracy (paper: 89.74 %) of ``recs``."""

  @jax.jit
  def fn(batch):
    inputs, targets = batch["caption"][:, :-1], batch["caption"][:, 1:]
    logits, _ = model.apply(variables, batch["image"], inputs, train=False)
    mask = (targets != vocab_lib.PAD) & batch["valid"][:, None]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)
    top5 = jnp.sum(logits > target_logit, axis=-1) < 5
    return jnp.sum(ce * mask), jnp.sum(top5 * mask), jnp.sum(mask)

  ce = hits = n = 0.0
  for b in pipeline.eval_batches(recs, pipeline.from_config(config), config.eval_batch_size):
    c, h, m = fn({k: b[k] for k in ("image", "caption", "valid")})
    ce, hits, n = ce + float(c), hits + float(h), n + float(m)
  return dict(cross_entropy=ce / max(n, 1), top5_accuracy=100.0 * hits / max(n, 1),
              words=int(n))


def caption_records(model, variables, vocab, recs, config, beam_size: int):
  """Per record: (word list, attention maps [len + 1, L]) in order."""
  out = [None] * len(recs)
  for b in pipeline.eval_batches(recs, pipeline.from_config(config), config.eval_batch_size):
    ids, alphas, _ = decode_lib.beam_search(
        model, variables, jnp.asarray(b["image"]), beam_size, config.decode.max_len,
        config.decode.length_penalty)
    for j in np.flatnonzero(b["valid"]):
      out[int(b["index"][j])] = decode_lib.to_words(vocab, ids[j], alphas[j])
  return out


def bleu_scores(hyps: list[list[str]], refs: list[str]) -> dict:
  """Corpus BLEU-4 of word lists against one reference description each."""
  ref_tokens = [[vocab_lib.tokenize(r)] for r in refs]
  ours = bleu.corpus_bleu(hyps, ref_tokens)
  return dict(bleu4=ours["bleu"], bleu4_sacrebleu=bleu.sacrebleu_reference(
      hyps, ref_tokens), precisions=ours["precisions"],
              brevity_penalty=ours["brevity_penalty"])


def evaluate(model, variables, vocab, samples, config) -> tuple[dict, list]:
  recs = records(samples, vocab, config.vocab.max_len)
  t0 = time.time()
  metrics = dict(teacher_forced_metrics(model, variables, recs, config))
  greedy = caption_records(model, variables, vocab, recs, config, 1)
  beam = caption_records(model, variables, vocab, recs, config, config.decode.beam_size)
  refs = [s.text for s in samples]
  metrics["greedy"] = bleu_scores([w for w, _ in greedy], refs)
  metrics["beam"] = bleu_scores([w for w, _ in beam], refs)
  metrics["beam_size"] = config.decode.beam_size
  metrics["n"] = len(samples)
  metrics["eval_seconds"] = round(time.time() - t0, 1)
  return metrics, [(s, vocab_lib.detokenize(g[0]), vocab_lib.detokenize(b[0]))
                   for s, g, b in zip(samples, greedy, beam)]


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False),
      item_names=("state", "data_iter"))


def _abstract(tree, shard):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard),
                      tree)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       log=print) -> dict:
  """Trains (or resumes) in ``workdir``; returns the evaluation metrics."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, CONFIG_FILE), "w", encoding="utf-8") as f:
    f.write(config.to_json(indent=2))
  manifest = resolve_manifest(config)
  train_samples = load_split(manifest, config.data.train_split)
  eval_samples = load_split(manifest, config.data.eval_split)
  vocab_path = os.path.join(workdir, VOCAB_FILE)
  if os.path.isfile(vocab_path):
    vocab = vocab_lib.Vocab.load(vocab_path)
  else:  # training descriptions only
    vocab = vocab_lib.Vocab.build([s.text for s in train_samples],
                                  config.vocab.min_count)
    vocab.save(vocab_path)
  log(f"captioner: {len(train_samples)} training, {len(eval_samples)} "
      f"{config.data.eval_split} descriptions, {len(vocab)} words")

  mesh = Mesh(np.array(jax.devices()), ("data",))
  rep, batch_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by "
                     f"{mesh.size} devices")
  model = build_model(config, len(vocab))
  tx = create_optimizer(config)
  loader = pipeline.train_loader(records(train_samples, vocab, config.vocab.max_len),
                                 pipeline.from_config(config), config.batch_size, config.seed)
  it = iter(loader)
  init = jax.jit(lambda rng: init_state(model, tx, config, rng), out_shardings=rep)
  rng = jax.random.key(config.seed)
  manager = checkpoint_manager(workdir, config.checkpoint_keep)
  if manager.latest_step() is not None:
    restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(jax.eval_shape(init, rng), rep)),
        data_iter=grain.checkpoint.CheckpointRestore(it)))
    state = restored["state"]
    log(f"captioner: resumed at step {int(state['step'])}")
  else:
    state = init(rng)
  log(f"Show-Attend-Tell ({config.model.encoder}): "
      f"{model_lib.count_params(state['params'])} parameters")

  train_step = make_train_step(model, tx, config.loss.attention_penalty)
  rng = jax.random.key(config.seed + 1)
  step = int(state["step"])
  history, window, t_last = [], [], time.time()
  while step < config.num_steps:
    batch = next(it)
    batch = jax.device_put({k: batch[k] for k in ("image", "caption")}, batch_sharding)
    state, metrics = train_step(state, batch, rng)
    step += 1
    window.append(metrics)
    if step % config.log_every_steps == 0 or step == config.num_steps:
      m = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
      if not math.isfinite(m["loss"]):
        raise FloatingPointError(f"captioner loss is {m['loss']} at step {step}")
      history.append(dict(step=step, **m))
      log(f"captioner step {step}/{config.num_steps} loss {m['loss']:.3f} "
          f"ce {m['cross_entropy']:.3f} penalty {m['attention_penalty']:.3f} "
          f"top5 {100 * m['top5']:.1f}% ({(time.time() - t_last) / len(window):.2f}s/step)")
      window, t_last = [], time.time()
    if step % config.checkpoint_every_steps == 0 or step == config.num_steps:
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data_iter=grain.checkpoint.CheckpointSave(it)), force=True)
  manager.wait_until_finished()

  variables = _variables(state["params"], state["batch_stats"])
  metrics, captions = evaluate(model, variables, vocab, eval_samples, config)
  metrics.update(split=config.data.eval_split, manifest=manifest, step=step,
                 train_history=history)
  log("captioner eval: " + json.dumps({k: metrics[k] for k in (
      "top5_accuracy", "cross_entropy", "greedy", "beam")}))
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "captioner_metrics.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=1)
  with open(os.path.join(out_dir, "captions.csv"), "w", newline="",
            encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["image", "reference", "greedy", "beam"])
    for s, g, b in captions:
      w.writerow([s.image, s.text, g, b])
  return metrics


def load_captioner(workdir: str):
  """``(config, model, variables, vocab)`` of the latest checkpoint in ``workdir``."""
  cfg_path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{cfg_path} not found: is {workdir} a captioner workdir "
                            "(launch/train_captioner.py)?")
  with open(cfg_path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  vocab = vocab_lib.Vocab.load(os.path.join(workdir, VOCAB_FILE))
  model = build_model(config, len(vocab))
  tx = create_optimizer(config)
  manager = checkpoint_manager(workdir, config.checkpoint_keep)
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"no captioner checkpoint in {workdir}/checkpoints")
  abstract = jax.eval_shape(lambda: init_state(model, tx, config, jax.random.key(0)))
  rep = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(abstract, rep))))["state"]
  return config, model, _variables(state["params"], state["batch_stats"]), vocab


def checkpoint_step(workdir: str) -> int | None:
  """The latest saved step of a captioner workdir (None: none saved)."""
  return checkpoint_manager(workdir, 1).latest_step()
