"""Shapes and masking of the text tower, the alignment (Eq. 7–8) and BMQA (Eq. 10)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax.models import align
from bmqa_jax.bmqa import model as bmqa
from bmqa_jax.models import image
from bmqa_jax.models import text


def test_text_encoder_ignores_padding():
  enc = text.create(
    "transformer", vocab_size=50, width=32, depth=2, num_heads=4, mlp_dim=64, max_len=10
  )
  ids = jnp.array([[2, 5, 6, 7, 0, 0, 0, 0, 0, 0]])
  v = enc.init(jax.random.key(0), ids, ids != 0)
  out = enc.apply(v, ids, ids != 0)
  assert out["tokens"].shape == (1, 10, 32) and out["pooled"].shape == (1, 32)
  ids2 = ids.at[0, 6].set(9)  # change a padded position
  out2 = enc.apply(v, ids2, ids != 0)
  np.testing.assert_allclose(out["pooled"], out2["pooled"], atol=1e-6)


def test_attentive_pool_shapes_and_mask():
  pool = align.AttentivePool(width=64, num_heads=8, qkv_dim=128, mlp_dim=96)
  x = jax.random.normal(jax.random.key(0), (3, 7, 20))
  mask = jnp.arange(7)[None] < jnp.array([[7], [3], [1]])
  v = pool.init(jax.random.key(1), x, mask)
  y = pool.apply(v, x, mask)
  assert y.shape == (3, 64)
  x2 = x.at[1, 5].set(100.0)  # masked token of row 1
  np.testing.assert_allclose(pool.apply(v, x2, mask)[1], y[1], atol=1e-5)
  qkv = v["params"]["attention"]["query"]["kernel"]
  assert qkv.shape == (64, 8, 16)  # projection 128 split over 8 heads


def test_paper_alignment_widths():
  pool = align.AttentivePool()  # defaults are Eq. 7–8's: 32 heads, 2048, 1024
  shapes = jax.eval_shape(pool.init, jax.random.key(0), jnp.zeros((1, 4, 2048)))
  assert shapes["params"]["attention"]["query"]["kernel"].shape == (1024, 32, 64)
  assert shapes["params"]["ln_ff"]["scale"].shape == (1024,)


@pytest.mark.parametrize("modalities", [("image", "text"), ("image",)])
def test_bmqa_outputs(modalities):
  model = bmqa.BMQA(
    image_encoder=image.create("resnet_tiny"),
    text_encoder=text.create(
      "transformer", 30, width=16, depth=1, num_heads=2, mlp_dim=32, max_len=8
    ),
    modalities=modalities,
    align_width=32,
    align_heads=4,
    align_qkv_dim=32,
    align_mlp_dim=64,
  )
  imgs = jnp.zeros((2, 32, 32, 3))
  ids = jnp.ones((2, 8), jnp.int32)
  v = model.init(jax.random.key(0), imgs, ids, ids > 0)
  out = model.apply(v, imgs, ids, ids > 0)
  assert out["score"].shape == (2,) and out["img"].shape == (2, 32)
  assert ("txt" in out) == ("text" in modalities)
  fuse = v["params"]["fuse"]["kernel"]
  assert fuse.shape == (32 * len(modalities), 1)  # Eq. 10: probe on the concat
  np.testing.assert_allclose(np.exp(float(out["log_temperature"])), 0.07, rtol=1e-6)
