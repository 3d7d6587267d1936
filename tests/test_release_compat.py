"""Workdirs of release 0.1 (written before the shared training library) still
load: weights for inference and scoring, and the full state for a resume
(tests/data/release_0_1/README.md)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from bmqa_jax import config_bases
from bmqa_jax import sharding
from bmqa_jax.bmqa import evaluate
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.captioner import infer as captioner_infer
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.speech import infer as speech_infer
from bmqa_jax.speech import model as speech_model
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import state as state_lib
from bmqa_jax.train_lib import workdir as workdir_lib

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "release_0_1")


@pytest.fixture()
def old(tmp_path):
  out = str(tmp_path / "release_0_1")
  shutil.copytree(DATA, out)
  return out


def test_bmqa_workdir_scores_and_resumes(old):
  work = os.path.join(old, "bmqa")
  cfg, model, variables, tok = evaluate.load_model(work)
  assert tok is None and set(variables) == {"params", "batch_stats"}
  manifest = os.path.join(old, "images", "manifest.csv")
  result = evaluate.evaluate_workdir(work, manifest=manifest, log=lambda *_: None)
  assert result["overall"]["n"] == 16
  assert result["checkpoint"] == {"stage": "st", "step": 3, "finished": None}
  # The full state (optimiser included) restores into today's stage plan.
  plan = stage_lib.make_stage(cfg, "st", sharding.make_mesh(cfg), 12)
  ckpt = os.path.join(work, "checkpoints", "st")
  state = checkpoint.restore(ckpt, 3, checkpoint.abstract(plan.abstract_state, plan.state_sharding))
  assert int(state["step"]) == 3
  jax.tree.map(np.testing.assert_array_equal, state["params"], variables["params"])
  # And config.json is still the workdir's own: no change is reported.
  stored = workdir_lib.load_config(work)
  assert workdir_lib.config_changes(stored, cfg, config_bases.complete) == []


def test_recogniser_workdir_transcribes_and_resumes(old):
  work = os.path.join(old, "asr")
  config, model, variables = speech_infer.load_recognizer(work)
  feats = np.zeros((1, 512, config.features.n_mels), np.float32)
  logits, _ = model.apply(variables, feats, np.array([512]), train=False)
  assert np.all(np.isfinite(np.asarray(logits)))
  # Its config is read as today's (`config_bases.complete`): release 0.1 named the
  # Adam moments' decay rates b1/b2, the beam width beam_width and the kept
  # checkpoints checkpoint_keep, and had no optimizer/schedule fields.
  assert (config.optimizer.adam_b1, config.optimizer.adam_b2) == (0.9, 0.98)
  assert "b1" not in config.optimizer and config.optimizer.schedule == "cosine"
  assert config.decode.beam_size == 4 and config.keep_checkpoints == 2
  # Its state was saved as the single item `default`; it restores in full.
  schedule = optim.make_schedule(config.optimizer, config.num_steps, config.optimizer.warmup_steps)
  tx = optim.make_optimizer(config.optimizer, schedule)
  abstract = jax.eval_shape(
    lambda k: state_lib.create(
      *(lambda v: (v["params"], v["batch_stats"]))(speech_model.init_variables(model, config, k)),
      tx,
    ),
    jax.random.key(0),
  )
  rep = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = checkpoint.restore(
    os.path.join(work, "checkpoints"), 2, checkpoint.abstract(abstract, rep)
  )
  assert int(state["step"]) == 2


def test_captioner_workdir_captions(old):
  work = os.path.join(old, "captioner")
  images = sorted(
    os.path.join(old, "images", n)
    for n in os.listdir(os.path.join(old, "images"))
    if n.endswith(".png")
  )[:2]
  config, _, _, vocab = captioner_infer.load_captioner(work)
  out = captioner_infer.caption_paths(work, images)
  assert len(out) == 2
  # Two training steps: one photo's caption may be empty (<eos> first), but
  # the weights do decode words, each from the stored vocabulary (never a
  # special token), and one attention map per word and per <eos> (none when the
  # caption reached decode.max_len).
  assert any(r["words"] for r in out)
  for r in out:
    assert all(vocab.index.get(w, vocab_lib.UNK) > vocab_lib.UNK for w in r["words"]), r
    assert r["caption"].split() == r["words"]
    att = np.asarray(r["attention"])
    ended = len(r["words"]) < config.decode.max_len
    assert att.shape[0] == len(r["words"]) + ended
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)


def test_workdir_with_the_removed_conv_impl_field_resumes(tmp_path):
  """config.json files written while `config.model.conv_impl` existed (the
  image encoders' ops now follow the backend) still build their model and
  resume under today's config, which lacks the field."""
  from bmqa_jax.bmqa import model as bmqa_model  # pylint: disable=g-import-not-at-top
  from bmqa_jax.configs import quickstart  # pylint: disable=g-import-not-at-top

  cfg = quickstart.get_config("tiny=True")
  assert "conv_impl" not in cfg.model
  work = str(tmp_path)
  workdir_lib.save_config(cfg, work)
  path = os.path.join(work, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    old = json.load(f)
  old["model"]["conv_impl"] = "gemm"
  with open(path, "w") as f:
    json.dump(old, f)
  stored = workdir_lib.load_config(work, complete=config_bases.complete)
  assert "conv_impl" not in stored.model  # read and dropped
  model = bmqa_model.from_config(stored, vocab_size=stored.tokenizer.vocab_size)
  assert model.image_encoder is not None
  logs = []
  workdir_lib.own_config(cfg, work, "refuse", logs.append, config_bases.complete)
  assert logs == []  # no change to report: the resume goes on
