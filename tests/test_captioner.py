"""bmqa_jax.captioner: Show-Attend-Tell, BLEU-4, decoding, image-only BMQA."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bmqa_jax.captioner import bleu
from bmqa_jax.captioner import decode
from bmqa_jax.experiments import descriptions
from bmqa_jax.captioner import model as model_lib
from bmqa_jax.captioner import train
from bmqa_jax.captioner import vocab as vocab_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
  vocab_size=12, encoder="vgg_tiny", embed_dim=8, hidden_dim=16, attention_dim=8, dropout_rate=0.0
)


@pytest.fixture(scope="module")
def tiny():
  """A small captioner (vgg_tiny: 2×2 attention positions at 64 px), 3 images."""
  m = model_lib.ShowAttendTell(**TINY)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(3, 64, 64, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1, TINY["vocab_size"], (3, 7)), jnp.int32)
  return m, jax.jit(m.init)(jax.random.key(0), images, ids), images, ids


def test_vocab_round_trip():
  v = vocab_lib.Vocab.build(["A dim, blue car.", "a dim room", "blue room"], 2)
  assert v.words[4:] == ["a", "blue", "dim", "room"]
  ids = v.encode(["a dim car, blue"], 6)
  assert ids.tolist() == [[1, 4, 6, 3, 3, 5, 2, 0]]  # car and ',' are <unk>
  assert v.decode_words([4, 6, 7, 2, 5]) == ["a", "dim", "room"]
  assert vocab_lib.detokenize(vocab_lib.tokenize("A dim, blue car.")) == "a dim, blue car."


def test_shapes_and_attention_is_a_distribution(tiny):
  m, v, images, ids = tiny
  logits, alphas = jax.jit(m.apply)(v, images, ids)
  assert logits.shape == (3, 7, 12) and alphas.shape == (3, 7, 4)  # 2×2 positions
  np.testing.assert_allclose(np.asarray(alphas).sum(-1), 1.0, rtol=1e-5)
  assert float(alphas.min()) >= 0.0

  @jax.jit
  def stepwise(v, images, ids):  # the decoding path: encode, start, step, step, ...
    tokens = m.apply(v, images, method=m.encode)
    carry, proj = m.apply(v, tokens, method=m.start)
    outs = []
    for t in range(3):
      carry, step_logits, a = m.apply(v, tokens, proj, carry, ids[:, t], method=m.step)
      outs.append((step_logits, a))
    return outs

  for t, (step_logits, a) in enumerate(stepwise(v, images, ids)):
    np.testing.assert_allclose(step_logits, logits[:, t], atol=1e-5)
    np.testing.assert_allclose(a, alphas[:, t], atol=1e-6)


def test_attention_penalty_and_loss_match_numpy():
  rng = np.random.default_rng(1)
  alphas = rng.dirichlet(np.ones(5), size=(3, 7)).astype(np.float32)  # B, T, L
  targets = rng.integers(1, 9, (3, 7)).astype(np.int32)
  targets[0, 5:] = 0
  targets[2, 3:] = 0
  mask = targets != 0
  want = np.array([np.sum((1 - alphas[b][mask[b]].sum(0)) ** 2) for b in range(3)])
  got = jax.jit(model_lib.attention_penalty)(alphas, mask.astype(np.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  logits = rng.normal(size=(3, 7, 9)).astype(np.float32)
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
  loss, m = jax.jit(model_lib.caption_loss, static_argnums=3)(logits, alphas, targets, 0.5)
  np.testing.assert_allclose(loss, ce[mask].mean() + 0.5 * want.mean(), rtol=1e-5)
  top5 = [(lp[b, t] > lp[b, t, targets[b, t]]).sum() < 5 for b, t in zip(*np.nonzero(mask))]
  np.testing.assert_allclose(m["top5"], np.mean(top5), rtol=1e-6)


def _greedy_reference(m, v, images, max_len):
  """Argmax at every step through the teacher-forcing call (no carry reuse):
  the decoder is causal, so the logits at step t see the inputs up to t only."""
  forced = jax.jit(lambda inputs: m.apply(v, images, inputs)[0])
  inputs = np.zeros((images.shape[0], max_len), np.int32)
  inputs[:, 0] = vocab_lib.BOS
  out = np.zeros_like(inputs)
  for t in range(max_len):
    out[:, t] = np.asarray(forced(jnp.asarray(inputs))[:, t]).argmax(-1)
    if t + 1 < max_len:
      inputs[:, t + 1] = out[:, t]
  return out, forced


def test_beam_one_equals_greedy_and_scores_are_log_probabilities(tiny):
  m, v, images, _ = tiny
  ref, forced = _greedy_reference(m, v, images, 7)
  ids, alphas, scores = decode.greedy(m, v, images, 7)
  for b in range(3):
    stop = list(ref[b]).index(vocab_lib.EOS) + 1 if vocab_lib.EOS in ref[b] else 7
    np.testing.assert_array_equal(ids[b, :stop], ref[b, :stop])
  assert alphas.shape[:2] == ids.shape and alphas.shape[2] == 4
  for k in (1, 3):
    ids, _, scores = decode.beam_search(m, v, images, k, 7)
    # Each returned score is the model's log-probability of that sequence.
    inputs = np.zeros((3, 7), np.int32)
    inputs[:, 0] = vocab_lib.BOS
    n = min(6, ids.shape[1])  # shorter when every beam ended early
    inputs[:, 1 : 1 + n] = ids[:, :n]
    lp = np.asarray(jax.nn.log_softmax(forced(jnp.asarray(inputs))))
    for b in range(3):
      seq = [i for i in ids[b] if i != vocab_lib.PAD]
      np.testing.assert_allclose(
        scores[b], sum(lp[b, t, w] for t, w in enumerate(seq)), rtol=1e-4, atol=1e-4
      )


def test_bleu4_equals_sacrebleu():
  pytest.importorskip("sacrebleu")
  rng = np.random.default_rng(0)
  words = "a dim room , blue noisy".split()
  nonzero = 0
  for trial in range(8):
    n, k = int(rng.integers(1, 30)), int(rng.integers(1, 3))
    refs = [[list(rng.choice(words[:3], rng.integers(3, 20))) for _ in range(k)] for _ in range(n)]
    hyps = [list(rng.choice(words[: 3 + trial % 4], rng.integers(1, 20))) for _ in range(n)]
    ours = bleu.corpus_bleu(hyps, refs)["bleu"]
    np.testing.assert_allclose(ours, bleu.sacrebleu_reference(hyps, refs), atol=1e-9)
    nonzero += ours > 0
  assert nonzero >= 4
  # Hand-computed: p1..p4 = 1, hypothesis shorter than its reference (BP < 1).
  r = bleu.corpus_bleu([["a", "b", "c", "d"]], [[["a", "b", "c", "d", "e"]]])
  np.testing.assert_allclose(r["bleu"], 100 * np.exp(1 - 5 / 4))


def _write_data(root, n=16):
  """Tiny manifest: bright images described as bright, dark ones as dark; the
  test rows have no text (image-only)."""
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    bright = i % 2 == 0
    img = rng.integers(150, 255, (64, 64, 3)) if bright else rng.integers(0, 40, (64, 64, 3))
    Image.fromarray(img.astype(np.uint8)).save(os.path.join(root, f"{i}.png"))
    split = "train" if i < 12 else "test"
    text = (
      ("a bright photo, clear and vivid." if bright else "a dark photo of a room, noisy.")
      if split == "train"
      else ""
    )
    rows.append(
      dict(
        image=f"{i}.png",
        mos=0.8 if bright else 0.2,
        scene=f"s{i}",
        split=split,
        text=text,
        device="cam",
      )
    )
  path = os.path.join(root, "manifest.csv")
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return path


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
  from bmqa_jax.configs import captioner as cap_config  # pylint: disable=import-outside-toplevel

  root = str(tmp_path_factory.mktemp("data"))
  manifest = _write_data(root)
  config = cap_config.get_config(f"manifest={manifest},runlocal=True,steps=8")
  config.data.eval_split = "train"
  config.model.update(encoder="vgg_tiny", embed_dim=16, hidden_dim=32, attention_dim=16)
  config.batch_size = config.eval_batch_size = 4
  config.vocab.update(min_count=1, max_len=10)
  config.decode.update(max_len=12, beam_size=1)  # one decoding program (beams: above)
  config.optimizer.update(learning_rate=1e-2, warmup_steps=2)
  config.log_every_steps = config.checkpoint_every_steps = 4
  workdir = str(tmp_path_factory.mktemp("captioner"))
  metrics = train.train_and_evaluate(config, workdir)
  return dict(workdir=workdir, metrics=metrics, manifest=manifest, root=root)


def test_captioner_trains_and_reports(captioner):
  m = captioner["metrics"]
  assert m["step"] == 8 and m["n"] == 12
  # A few steps of the real trainer (teacher forcing + penalty) reduce the loss.
  assert m["train_history"][-1]["loss"] < 0.9 * m["train_history"][0]["loss"]
  assert 0 <= m["top5_accuracy"] <= 100
  if m["beam"]["bleu4_sacrebleu"] is not None:
    assert m["beam"]["bleu4"] == pytest.approx(m["beam"]["bleu4_sacrebleu"])
  with open(os.path.join(captioner["workdir"], "eval", "captions.csv")) as f:
    assert len(list(csv.DictReader(f))) == 12


def test_caption_launcher_writes_attention_maps(captioner, tmp_path):
  out = tmp_path / "captions.csv"
  (tmp_path / "broken.jpg").write_bytes(b"not an image")
  proc = subprocess.run(
    [
      sys.executable,
      "launch/caption.py",
      f"--workdir={captioner['workdir']}",
      f"--out={out}",
      f"--attention_dir={tmp_path / 'att'}",
      os.path.join(captioner["root"], "1*.png"),
      str(tmp_path / "broken.jpg"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    rows = {os.path.basename(r["image"]): r for r in csv.DictReader(f)}
  assert len(rows) == 8 and rows["broken.jpg"]["error"]  # 1.png, 10..15.png, broken
  pngs = sorted(os.listdir(tmp_path / "att"))
  for name in ("1", "10", "15"):
    words = vocab_lib.tokenize(rows[f"{name}.png"]["text"])
    per_word = [p for p in pngs if p.startswith(f"{name}_") and not p.endswith("_all.png")]
    assert len(per_word) in (len(words), len(words) + 1)  # + the <eos> step
    assert f"{name}_all.png" in pngs
  assert os.path.getsize(tmp_path / "att" / "1_all.png") > 1000


def test_image_only_bmqa_with_generated_descriptions(captioner, tmp_path, monkeypatch):
  """Dark-4K protocol: a model trained on image + given text scores images of
  a manifest without text, with descriptions from the captioner."""
  from bmqa_jax.configs import quickstart  # pylint: disable=import-outside-toplevel
  from bmqa_jax.bmqa import evaluate  # pylint: disable=import-outside-toplevel
  from bmqa_jax.bmqa import train as bmqa_train  # pylint: disable=import-outside-toplevel
  from bmqa_jax.data import datasets  # pylint: disable=import-outside-toplevel

  cfg = quickstart.get_config("tiny=True")
  cfg.data.update(kind="manifest", manifest=captioner["manifest"])
  cfg.stages = "st"
  cfg.st.update(init="fresh", epochs=1, batch_size=4, eval_split="")
  cfg.eval.batch_size = 4
  workdir = str(tmp_path / "bmqa")
  bmqa_train.train_and_evaluate(cfg, workdir, progress=False)
  calls = []
  real = descriptions.generate
  monkeypatch.setattr(descriptions, "generate", lambda *a: calls.append(len(a[2])) or real(*a))
  source, describe = descriptions.for_evaluation(workdir, captioner=captioner["workdir"])
  result = evaluate.evaluate_workdir(
    workdir,
    manifest=captioner["manifest"],
    manifest_split="test",
    text_source=source,
    describe=describe,
  )
  assert calls == [4] and result["overall"]["n"] == 4  # the 4 test rows (no text)
  assert result["text_source"] == "captioner"
  out = os.path.join(workdir, "eval", "manifest_test")  # another manifest's folder
  with open(os.path.join(out, "descriptions.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 and all(r["source"] == "captioner" for r in rows)
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["overall"]["n"] == 4
  assert not os.path.exists(os.path.join(workdir, "eval", "metrics.json"))
  # config.data.text_source='captioner' on the run's own split: the cached
  # descriptions are reused (no generation), and are the captioner's.
  cfg.data.update(text_source="captioner", captioner_workdir=captioner["workdir"])
  data = datasets.load(cfg, workdir, ("test",), describe=descriptions.for_training(cfg, workdir))
  assert calls == [4]
  assert [s.text for s in data.splits["test"]] == [r["text"] for r in rows]
