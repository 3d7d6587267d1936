"""Heads and input corruption of the stage-PT strategies CL and RE (Sec. 5.3, Table 2).

Stage PT pretrains both towers on caption pairs (MS-COCO in the paper) with one
of three strategies, chosen by `config.pt.loss`:

- FM, 'info_nce': image–text feature alignment, Eq. 11–13 (no head; method h);
- CL, 'classify': each tower classifies the object categories of its sample
  (multi-label, one sigmoid per category) from its aligned feature F̂_img /
  F̂_aud (Eq. 7–8): `CategoryHead` (method f);
- RE, 'restore': random image patches are blanked and their pixels regressed
  from the image tower's token map by `PixelDecoder`, and random words of the
  description are replaced by a mask id and predicted from the text tower's
  word features by `MaskedWordHead` (method g).

The heads are created by `BMQA.__call__(..., objective=...)` only, so the
variables of SS and ST (called without an objective) hold none of them;
`bmqa_jax.bmqa.train` hands only the parameters the next stage's model has over.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bmqa_jax import losses

Dtype = Any

OBJECTIVES = ("classify", "restore")


class CategoryHead(nn.Module):
  """CL: logits of `num_classes` independent categories from an aligned vector."""

  num_classes: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)


def token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int, int]:
  """(rows, cols, leading tokens to skip) of an image token map over H×W pixels.

  The encoders give the last feature map flattened row-major (N = H'·W') or
  transformer tokens with the class token first (N = 1 + H'·W'); the stride is
  the same along both axes.
  """
  for skip in (0, 1):
    n = num_tokens - skip
    stride = (height * width / max(n, 1)) ** 0.5
    s = int(round(stride))
    if s > 0 and height % s == 0 and width % s == 0 and (height // s) * (width // s) == n:
      return height // s, width // s, skip
  raise ValueError(
    f"cannot place {num_tokens} image tokens on a regular grid over {height}x{width} pixels"
  )


class PixelDecoder(nn.Module):
  """RE, image side: a light decoder from the token map back to pixels.

  Each token of the H'×W' map predicts the s×s×3 pixels of the cell it covers
  (s = H / H', LayerNorm → Dense → GELU → Dense, then a pixel shuffle); returns
  the whole reconstructed image [B, H, W, 3] in the normalised input space.
  """

  hidden_dim: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, image_shape):
    b, n, _ = tokens.shape
    height, width = image_shape
    rows, cols, skip = token_grid(n, height, width)
    s = height // rows
    x = nn.LayerNorm(dtype=self.dtype, name="ln")(tokens[:, skip:])
    x = nn.gelu(nn.Dense(self.hidden_dim, dtype=self.dtype, name="hidden")(x))
    x = nn.Dense(s * s * 3, dtype=self.dtype, name="pixels")(x)
    x = x.reshape(b, rows, cols, s, s, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, 3).astype(jnp.float32)


class MaskedWordHead(nn.Module):
  """RE, text side: logits over the vocabulary at every word position."""

  vocab_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    x = nn.LayerNorm(dtype=self.dtype, name="ln")(tokens)
    return nn.Dense(self.vocab_size, dtype=self.dtype, name="logits")(x).astype(jnp.float32)


def _choose(rng, eligible, ratio: float):
  """Boolean [B, K]: round(ratio · #eligible), at least 1, random eligible places."""
  count = jnp.maximum(jnp.round(ratio * eligible.sum(1)), 1.0)
  score = jnp.where(eligible, jax.random.uniform(rng, eligible.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(score, axis=1), axis=1)
  return eligible & (rank < count[:, None])


def mask_patches(rng, images, patch: int, ratio: float):
  """Blanks (sets to 0, the mean colour after normalisation) random patches.

  Returns (masked images, pixel mask [B, H, W] True where blanked).
  """
  b, h, w, _ = images.shape
  if h % patch or w % patch:
    raise ValueError(
      f"config.pretrain.patch={patch} does not divide the image "
      f"size {h}x{w} (config.input.image_size)"
    )
  grid = jnp.ones((b, (h // patch) * (w // patch)), bool)
  chosen = _choose(rng, grid, ratio).reshape(b, h // patch, w // patch)
  pixels = jnp.repeat(jnp.repeat(chosen, patch, axis=1), patch, axis=2)
  return jnp.where(pixels[..., None], 0.0, images), pixels


def mask_words(rng, ids, mask, ratio: float, mask_id: int):
  """Replaces random words (never the first token, BOS) by `mask_id`.

  Returns (masked ids, word mask [B, L] True where replaced).
  """
  eligible = mask & (jnp.arange(ids.shape[1]) > 0)[None]
  chosen = _choose(rng, eligible, ratio)
  return jnp.where(chosen, mask_id, ids), chosen


def corrupt(batch: dict, rng, cfg, has_image: bool, has_text: bool) -> dict:
  """RE inputs: `batch` with `image` / `text_ids` masked; the originals are
  kept as `image_target` / `text_target` and the masks added as `pixel_mask` /
  `word_mask` (`cfg` is `config.pretrain`)."""
  out = dict(batch)
  rng_img, rng_txt = jax.random.split(rng)
  if has_image:
    out["image_target"] = batch["image"]
    out["image"], out["pixel_mask"] = mask_patches(
      rng_img, batch["image"], cfg.patch, cfg.mask_ratio_image
    )
  if has_text:
    out["text_target"] = batch["text_ids"]
    out["text_ids"], out["word_mask"] = mask_words(
      rng_txt, batch["text_ids"], batch["text_mask"], cfg.mask_ratio_text, cfg.mask_token_id
    )
  return out


def loss(objective: str, out: dict, batch: dict, cfg) -> tuple[jax.Array, dict]:
  """(weighted sum of the towers' losses, per-tower metrics) of CL or RE.

  `out` is the model's output for `objective`; `cfg` is `config.pretrain`.
  """
  terms = {}
  if objective == "classify":
    if "labels" not in batch:
      raise ValueError(
        "pretraining loss 'classify' needs category labels: the "
        "caption pairs have none (set config.pretrain.categories)"
      )
    for k, name, w in (
      ("img", "image", cfg.classify_weight_image),
      ("txt", "text", cfg.classify_weight_text),
    ):
      if f"{k}_logits" in out:
        terms[f"classify_{name}"] = (
          w,
          losses.multilabel_sigmoid_ce(out[f"{k}_logits"], batch["labels"]),
        )
  elif objective == "restore":
    if "img_restored" in out:
      terms["restore_image"] = (
        cfg.restore_weight_image,
        losses.masked_pixel_mse(out["img_restored"], batch["image_target"], batch["pixel_mask"]),
      )
    if "txt_logits" in out:
      terms["restore_text"] = (
        cfg.restore_weight_text,
        losses.masked_token_ce(out["txt_logits"], batch["text_target"], batch["word_mask"]),
      )
  else:
    raise ValueError(f"unknown pretraining objective {objective!r}; known: {OBJECTIVES}")
  total = sum(w * v for w, v in terms.values())
  return total, {k: v for k, (_, v) in terms.items()}
