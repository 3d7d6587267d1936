"""Stage-PT strategies CL and RE (Table 2 f–g), text-only BMQA, COCO caption pairs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bmqa_jax import config_bases
from bmqa_jax import defaults
from bmqa_jax import losses
from bmqa_jax import sharding
from bmqa_jax.bmqa import stage as stage_lib
from bmqa_jax.data import categories
from bmqa_jax.data import pipeline
from bmqa_jax.bmqa import model as bmqa
from bmqa_jax.bmqa import pretrain

VOCAB = 30
B, L, S = 4, 8, 32


def _cfg(loss, modalities=("image", "text")):
  c = defaults.base_config()
  c.input.update(image_size=S, max_text_len=L)
  c.model.modalities = modalities
  c.model.image = dict(name="resnet_tiny", init="", kwargs={})
  c.model.text = dict(name="bow", kwargs=dict(width=16, depth=1, mlp_dim=16))
  c.model.align = dict(width=16, heads=2, qkv_dim=16, mlp_dim=32)
  c.pretrain.update(categories=("cat", "rocket", "sky"), patch=8, decoder_dim=16)
  c.pt.update(loss=loss, batch_size=B, learning_rate=3e-3, epochs=1)
  return c


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, VOCAB, (B, L)).astype(np.int32)
  ids[:, 0] = 2
  ids[1, 5:] = 0
  ids[3, 3:] = 0
  return dict(
    image=rng.normal(size=(B, S, S, 3)).astype(np.float32),
    text_ids=ids,
    text_mask=ids != 0,
    mos=np.zeros(B, np.float32),
    labels=np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], np.float32),
  )


def test_losses_match_references():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)).astype(np.float32) * 3
  labels = _batch()["labels"]
  want = optax.sigmoid_binary_cross_entropy(logits, labels).sum(-1).mean()
  np.testing.assert_allclose(losses.multilabel_sigmoid_ce(logits, labels), want, rtol=1e-5)
  pred, target = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
  pm = rng.random((2, 4, 4)) < 0.5
  want = ((pred - target) ** 2)[pm].mean()
  np.testing.assert_allclose(losses.masked_pixel_mse(pred, target, pm), want, rtol=1e-5)
  tl = rng.normal(size=(2, 5, 7)).astype(np.float32)
  tgt = rng.integers(0, 7, (2, 5))
  wm = np.array([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], bool)
  want = optax.softmax_cross_entropy_with_integer_labels(tl, tgt)[wm].mean()
  np.testing.assert_allclose(losses.masked_token_ce(tl, tgt, wm), want, rtol=1e-5)


def test_masking():
  b = _batch()
  img, pix = pretrain.mask_patches(jax.random.key(0), jnp.asarray(b["image"]), 8, 0.5)
  assert pix.shape == (B, S, S)
  np.testing.assert_array_equal(pix.reshape(B, -1).sum(1), 8 * 8 * 8)  # 8 of 16
  assert np.all(np.asarray(img)[np.asarray(pix)] == 0)
  np.testing.assert_array_equal(np.asarray(img)[~np.asarray(pix)], b["image"][~np.asarray(pix)])
  ids, wm = pretrain.mask_words(jax.random.key(1), b["text_ids"], b["text_mask"], 0.3, mask_id=1)
  wm = np.asarray(wm)
  assert not wm[:, 0].any() and not wm[~b["text_mask"]].any()  # never BOS or pad
  np.testing.assert_array_equal(wm.sum(1), [2, 1, 2, 1])  # round(0.3·words), ≥ 1
  np.testing.assert_array_equal(np.asarray(ids)[wm], 1)
  np.testing.assert_array_equal(np.asarray(ids)[~wm], b["text_ids"][~wm])


def test_token_grid():
  assert pretrain.token_grid(16, 32, 32) == (4, 4, 0)  # CNN feature map
  assert pretrain.token_grid(1 + 49, 224, 224) == (7, 7, 1)  # ViT-B/32, class token
  with pytest.raises(ValueError, match="regular grid"):
    pretrain.token_grid(7, 32, 32)


@pytest.mark.parametrize("modalities", [("text",), ("image", "text")])
def test_model_towers_and_heads(modalities):
  model = bmqa.from_config(_cfg("classify", modalities), VOCAB)
  b = _batch()
  args = (b["image"], b["text_ids"], b["text_mask"])
  v = jax.eval_shape(model.init, jax.random.key(0), *args)
  assert ("image_encoder" in v["params"]) == ("image" in modalities)
  assert not any(k.startswith("pt_") for k in v["params"])  # no heads unless asked
  out = jax.eval_shape(
    functools.partial(model.init_with_output, objective="classify"), jax.random.key(0), *args
  )[0]
  assert set(out) == (
    {"txt", "score", "log_temperature", "txt_logits"}
    | ({"img", "img_logits"} if "image" in modalities else set())
  )
  assert out["txt_logits"].shape == (B, 3) and out["score"].shape == (B,)
  vr = jax.eval_shape(functools.partial(model.init, objective="restore"), jax.random.key(0), *args)
  assert "pt_restore_txt" in vr["params"]
  assert ("pt_restore_img" in vr["params"]) == ("image" in modalities)


def _learnable_batch():
  """A batch RE can learn from: one colour per image, one word per description."""
  b = _batch()
  colours = np.array([[1, -1, 0], [-1, 1, 1], [0, 0, -1], [1, 1, -1]], np.float32)
  b["image"] = np.broadcast_to(colours[:, None, None], (B, S, S, 3)).copy()
  b["text_ids"] = np.where(b["text_mask"], np.arange(5, 5 + B)[:, None], 0)
  b["text_ids"][:, 0] = 2
  return b


# CL on the text-only model (Table 2 b/d towers), RE on both towers.
@pytest.mark.parametrize(
  "loss,modalities", [("classify", ("text",)), ("restore", ("image", "text"))]
)
def test_pt_steps_lower_the_loss(loss, modalities):
  cfg = _cfg(loss, modalities)
  cfg.model.image.name = "vit_tiny"  # compiles faster; its class token is skipped
  model = bmqa.from_config(cfg, VOCAB)
  stage = stage_lib.make_stage(cfg, "pt", sharding.make_mesh(cfg), 4 * B, VOCAB, model)
  v0 = stage.init_variables(jax.random.key(0))
  state = stage.init_state(v0)
  heads = {f"pt_{loss}_{k}" for k, m in (("img", "image"), ("txt", "text")) if m in modalities}
  assert {k for k in state["params"] if k.startswith("pt_")} == heads
  step = jax.jit(stage.train_step)
  batch = jax.tree.map(jnp.asarray, _learnable_batch())
  first = None
  for _ in range(6):
    state, m = step(state, batch, jax.random.key(1))
    first = m if first is None else first
  parts = [f"{loss}_{m}" for m in modalities]
  np.testing.assert_allclose(first["loss"], sum(first[p] for p in parts), rtol=1e-5)
  assert float(m["loss"]) < 0.9 * float(first["loss"])
  if loss == "classify":  # the first step's loss, recomputed outside the trainer
    out = jax.jit(functools.partial(model.apply, objective="classify"))(
      v0, None, batch["text_ids"], batch["text_mask"]
    )
    assert "img" not in out and "img_logits" not in out
    want = optax.sigmoid_binary_cross_entropy(out["txt_logits"], batch["labels"]).sum(-1).mean()
    np.testing.assert_allclose(first["loss"], want, rtol=1e-5)


def test_unknown_loss_and_missing_categories():
  cfg = _cfg("mystery")
  mesh = sharding.make_mesh(cfg)
  with pytest.raises(ValueError, match="unknown"):
    stage_lib.make_stage(cfg, "pt", mesh, 4 * B, VOCAB)
  cfg = _cfg("classify")
  cfg.data.kind = "manifest"
  cfg.pretrain.categories = ()
  with pytest.raises(ValueError, match="needs object categories"):
    stage_lib.make_stage(cfg, "pt", mesh, 4 * B, VOCAB)
  with pytest.raises(ValueError, match="image and the text tower"):
    stage_lib.make_stage(_cfg("info_nce", ("text",)), "pt", mesh, 4 * B, VOCAB)


def test_caption_labels():
  names = categories.builtin_categories()
  texts = [
    "a dim photo of the night sky and stars, noisy.",
    "a bright photo of an orange cat, white whiskers in a studio.",
  ]
  hot = categories.multi_hot(texts, names)
  got = [{names[i] for i in np.flatnonzero(h)} for h in hot]
  assert got == [{"night sky", "stars"}, {"cat", "whiskers"}]


def test_coco_caption_pairs_from_mock_tfds(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from bmqa_jax.data import coco  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    pairs = coco.load(str(tmp_path), "train", log=lambda *_: None)
    src = tfds.builder("coco_captions", data_dir=str(tmp_path)).as_data_source("train")
    want = [(i, c) for i in range(3) for c in src[i]["captions"]["text"] if c.strip()]
    assert [(int(i), s.text) for i, s in zip(pairs.source_index, pairs.samples)] == [
      (i, str(c).strip()) for i, c in want
    ]
    for i, hot in zip(pairs.source_index, pairs.labels):
      assert hot.shape == (80,)
      np.testing.assert_array_equal(np.flatnonzero(hot), np.unique(src[int(i)]["objects"]["label"]))
    recs = coco.CocoRecords(pipeline.to_records(pairs.samples, None, L), pairs)
    pcfg = pipeline.from_config(config_bases.complete({"input": dict(image_size=16)}))
    loader = pipeline.train_loader(recs, pcfg, 2, seed=0)
    batch = next(iter(loader))
  assert batch["image"].shape == (2, 16, 16, 3) and batch["labels"].shape == (2, 80)
  assert "path" not in batch and "image_u8" not in batch
