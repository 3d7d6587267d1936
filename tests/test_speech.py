"""bmqa_jax.speech: CTC loss, decoding, DeepSpeech2 model, training loop."""

import csv
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax.speech import decode
from bmqa_jax.speech import infer
from bmqa_jax.speech import model as model_lib
from bmqa_jax.speech import text
from bmqa_jax.speech import train


def test_text_normalize_encode_decode():
  assert text.normalize("A Dim-street, NOISY & it's  blurred!") == "a dim street noisy it's blurred"
  ids = text.encode("Dark room")
  assert ids.dtype == np.int32 and text.BLANK not in ids
  assert text.decode_ids(ids) == "dark room"
  assert text.VOCAB_SIZE == 29 and text.VOCAB[text.BLANK] == "<blank>"


def _brute_force_ctc(log_probs, labels, blank=0):
  """-log sum over every frame path that collapses to ``labels``."""
  t, v = log_probs.shape
  total = -np.inf
  for path in itertools.product(range(v), repeat=t):
    if decode.collapse(path, blank) == list(labels):
      total = np.logaddexp(total, sum(log_probs[i, c] for i, c in enumerate(path)))
  return -total


def test_ctc_loss_matches_brute_force_alignment_sum():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 4)).astype(np.float32)  # B=3, T=5, V=4
  labels = np.array([[1, 2, 0], [2, 2, 0], [3, 1, 3]], np.int32)  # incl. a repeat
  label_lengths = np.array([2, 2, 3])
  out_lengths = np.array([5, 4, 5])  # second one padded
  loss = np.asarray(
    train.ctc_loss(jnp.asarray(logits), out_lengths, jnp.asarray(labels), label_lengths)
  )
  for b in range(3):
    lp = decode.log_softmax(logits[b, : out_lengths[b]])
    want = _brute_force_ctc(lp, labels[b, : label_lengths[b]])
    np.testing.assert_allclose(loss[b], want, rtol=1e-4)


def test_min_ctc_frames_is_the_feasibility_bound():
  assert train.min_ctc_frames(np.array([1, 1, 2, 3, 3, 3])) == 9
  labels = np.array([[4, 4, 5]], np.int32)  # needs 4 frames
  logits = jnp.zeros((1, 4, 6))
  loss = np.asarray(train.ctc_loss(logits, np.array([4]), labels, np.array([3])))
  short = np.asarray(train.ctc_loss(logits, np.array([3]), labels, np.array([3])))
  # 4 frames: exactly one path (4, blank, 4, 5), probability (1/6)^4.
  np.testing.assert_allclose(loss, 4 * np.log(6), rtol=1e-5)
  assert short[0] > 1e3  # no path: optax's log-epsilon floor


def test_ctc_loss_matches_torch():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(1)
  b, t, v, n = 4, 30, text.VOCAB_SIZE, 8
  logits = rng.normal(size=(b, t, v)).astype(np.float32)
  labels = rng.integers(1, v, size=(b, n)).astype(np.int32)
  in_len, lab_len = np.array([30, 25, 20, 12]), np.array([8, 5, 7, 3])
  ours = np.asarray(train.ctc_loss(jnp.asarray(logits), in_len, jnp.asarray(labels), lab_len))
  lp = torch.log_softmax(torch.tensor(logits), -1).transpose(0, 1)
  ref = torch.nn.functional.ctc_loss(
    lp, torch.tensor(labels), torch.tensor(in_len), torch.tensor(lab_len), blank=0, reduction="none"
  )
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4)


def _one_hot_logits(ids, v=text.VOCAB_SIZE, peak=8.0):
  out = np.zeros((len(ids), v), np.float32)
  out[np.arange(len(ids)), ids] = peak
  return out


def test_greedy_decode_collapses_repeats_and_blanks():
  c = {ch: i for i, ch in enumerate(text.VOCAB)}
  frames = [
    c["h"],
    c["h"],
    0,
    c["e"],
    c["l"],
    c["l"],
    0,
    c["l"],
    c["o"],
    0,
    c[" "],
    c["a"],
    c["a"],
    0,
    0,
  ]
  logits = _one_hot_logits(frames)[None]
  assert decode.greedy_decode(logits) == ["hello a"]
  assert decode.greedy_decode(logits, [5]) == ["hel"]
  assert decode.beam_decode(logits, beam_size=4) == ["hello a"]


def test_beam_search_sums_paths_where_greedy_does_not():
  # Two frames, each P(blank)=0.6, P(a)=0.4: best path is blank-blank ("", 0.36)
  # but P("a") = 0.4*0.4 + 0.4*0.6 + 0.6*0.4 = 0.64.
  v = text.VOCAB_SIZE
  a = text.VOCAB.index("a")
  probs = np.full((2, v), 1e-9)
  probs[:, 0], probs[:, a] = 0.6, 0.4
  logits = np.log(probs / probs.sum(1, keepdims=True))[None]
  assert decode.greedy_decode(logits) == [""]
  assert decode.beam_decode(logits, beam_size=4) == ["a"]
  hyps = decode.prefix_beam_search(decode.log_softmax(logits[0]), beam_size=4)
  np.testing.assert_allclose(np.exp(hyps[0][1]), 0.64, rtol=1e-6)


def test_beam_search_scores_equal_brute_force_labelling_probabilities():
  rng = np.random.default_rng(3)
  lp = decode.log_softmax(rng.normal(size=(4, 3)) * 2)
  hyps = decode.prefix_beam_search(lp, beam_size=1000, prune_log_prob=-np.inf)
  assert abs(np.logaddexp.reduce([s for _, s in hyps])) < 1e-9  # sums to 1
  for labels, score in hyps[:6]:
    np.testing.assert_allclose(-score, _brute_force_ctc(lp, labels), rtol=1e-9)


TINY = dict(
  conv_features=(4, 4),
  conv_kernels=((5, 7), (3, 5)),
  conv_strides=((3, 2), (1, 2)),
  rnn_hidden=16,
  rnn_layers=1,
)


def test_model_shapes_and_padding_invariance():
  m = model_lib.DeepSpeech2(**TINY)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 60, 16)).astype(np.float32)
  x[1, 40:] = 0
  lengths = np.array([60, 40])
  variables = m.init(jax.random.key(0), x, lengths)
  logits, out_len = m.apply(variables, x, lengths)
  assert logits.shape == (2, 20, text.VOCAB_SIZE)
  np.testing.assert_array_equal(out_len, [20, 14])
  alone, _ = m.apply(variables, x[1:, :40], lengths[1:])
  np.testing.assert_allclose(np.asarray(logits[1, :14]), np.asarray(alone[0]), atol=1e-5)
  assert model_lib.output_lengths(np.array([59, 61]), (3, 1)).tolist() == [20, 21]


def _write_manifest(root, n=6):
  """Tiny manifest: spoken (eSpeak) when available, else tones per word."""
  from bmqa_jax.data import tts  # pylint: disable=import-outside-toplevel
  import soundfile  # pylint: disable=import-outside-toplevel

  sentences = [
    "a dark room",
    "a bright street",
    "a dim car",
    "blurred and noisy",
    "vivid colours",
    "a dull red lamp",
  ]
  rows = []
  for i in range(n):
    s = sentences[i % len(sentences)]
    path = os.path.join(root, f"{i}.wav")
    if tts.available():
      tts.synthesize(s, path, voice=tts.voices()[i % 3])
    else:
      t = np.arange(8000 * len(s.split())) / 16000
      soundfile.write(path, 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t), 16000)
    rows.append(dict(audio=f"{i}.wav", text=s, split="train" if i < n - 2 else "test"))
  manifest = os.path.join(root, "manifest.csv")
  with open(manifest, "w", newline="") as f:
    w = csv.DictWriter(f, ["audio", "text", "split"])
    w.writeheader()
    w.writerows(rows)
  return manifest


def test_train_resume_and_transcribe(tmp_path, monkeypatch):
  from bmqa_jax.configs import asr  # pylint: disable=import-outside-toplevel

  manifest = _write_manifest(str(tmp_path))
  config = asr.get_config(f"manifest={manifest},runlocal=True,steps=30")
  config.model.update(TINY)
  config.features.n_mels = 16
  config.batch_size, config.eval_batch_size = 4, 2
  config.frame_buckets = (512,)
  config.optimizer.update(learning_rate=1e-2, warmup_steps=3)
  config.log_every_steps = config.checkpoint_every_steps = 10
  workdir = str(tmp_path / "run")
  metrics = train.train_and_evaluate(config, workdir)
  assert metrics["step"] == 30 and metrics["greedy"]["n"] == 2
  # The tiny model learns: mean CTC loss of steps 21-30 well under that of 1-10.
  (_, first), *_, (_, last) = metrics["train_loss"]
  assert last < 0.75 * first, metrics["train_loss"]
  assert 0 <= metrics["beam"]["wer"] and os.path.exists(f"{workdir}/eval/asr_metrics.json")
  with open(f"{workdir}/eval/asr_metrics.json") as f:
    assert json.load(f)["step"] == 30

  # A rerun restores step 30 (so it must not take a step) and evaluates the
  # same weights: identical transcripts.
  def no_step(*args):
    raise AssertionError("resumed run trained although step 30 was saved")

  monkeypatch.setattr(train, "make_train_step", lambda *a: no_step)
  logs = []
  again = train.train_and_evaluate(config, workdir, log=logs.append)
  assert again["step"] == 30 and again["beam"] == metrics["beam"]
  assert "[asr] complete, skipping" in logs  # the shared set-up, one log channel
  out = str(tmp_path / "out" / "t.csv")
  rows = infer.transcribe_manifest(workdir, manifest, out)
  with open(out) as f:
    written = list(csv.DictReader(f))
  assert len(written) == 6 and "text_reference" in written[0]
  assert written[0]["audio"] == os.path.join("..", "0.wav")
  assert [r["text"] for r in written] == [r["text"] for r in rows]
  # JSONL stays JSONL; the input manifest is never the output.
  out_jsonl = str(tmp_path / "out" / "t.jsonl")
  infer.transcribe_manifest(workdir, manifest, out_jsonl)
  with open(out_jsonl) as f:
    assert [json.loads(l)["text"] for l in f] == [r["text"] for r in rows]
  before = open(manifest).read()
  with pytest.raises(ValueError, match="is the input manifest"):
    infer.transcribe_manifest(workdir, manifest, manifest)
  assert open(manifest).read() == before


def test_ctc_jiwer_metrics():
  m = infer.evaluate_transcripts(
    ["a dark room", "a bright street"], ["a dark room", "a bright streets"]
  )
  assert m["wer"] == pytest.approx(1 / 6) and m["n"] == 2


def test_recogniser_stops_at_a_non_finite_step_and_keeps_finite_checkpoints(tmp_path):
  """The shared step loop guards the recogniser as it guards BMQA."""
  from bmqa_jax.configs import asr  # pylint: disable=import-outside-toplevel
  from bmqa_jax.train_lib import checkpoint, loop  # pylint: disable=import-outside-toplevel

  manifest = _write_manifest(str(tmp_path))
  config = asr.get_config(f"manifest={manifest},runlocal=True,steps=8")
  config.model.update(TINY)
  config.features.n_mels = 16
  config.batch_size, config.eval_batch_size = 4, 2
  config.frame_buckets = (512,)
  config.optimizer.update(learning_rate=1e30, warmup_steps=0, grad_clip_norm=0.0)
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteError, match=r"\[asr\] non-finite"):
    train.train_and_evaluate(config, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  for step in checkpoint.manager(ckpts).all_steps():
    w, _ = checkpoint.load_weights(ckpts, step=step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(w))
  assert not os.path.exists(os.path.join(workdir, ".lock"))
