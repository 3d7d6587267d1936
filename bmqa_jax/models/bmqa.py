"""The BMQA model (paper Fig. 8, Algorithm 1): two towers, alignment, fusion.

image → F_img (Eq. 5–6) → F̂_img (Eq. 7); description → F_aud (Eq. 3–4) → F̂_aud
(Eq. 8); score = F_fuse(concat(F̂_img, F̂_aud)) (Eq. 10), a linear probe on the
2048-wide concatenation. With `modalities=('image',)` the text tower is absent
and the probe reads F̂_img alone (the single-modality rows of Table 2).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from bmqa_jax.models.align import AttentivePool

Dtype = Any


class BMQA(nn.Module):
  image_encoder: nn.Module
  text_encoder: nn.Module | None
  modalities: Sequence[str] = ("image", "text")
  align_width: int = 1024
  align_heads: int = 32
  align_qkv_dim: int = 2048
  align_mlp_dim: int = 2048
  temperature_init: float = 0.07
  dtype: Dtype = jnp.float32

  def _pool(self, name):
    return AttentivePool(self.align_width, self.align_heads, self.align_qkv_dim,
                         self.align_mlp_dim, self.dtype, name=name)

  @nn.compact
  def __call__(self, images, text_ids=None, text_mask=None, *, train: bool = False,
               train_image: bool | None = None):
    """Returns dict(img, txt (if text), score [B], log_temperature)."""
    train_image = train if train_image is None else train_image
    img = self.image_encoder(images, train=train_image)
    out = {"img": self._pool("img_align")(img["tokens"])}
    feats = [out["img"]]
    if "text" in self.modalities:
      if text_ids is None:
        raise ValueError("this model reads a description: pass text_ids/text_mask")
      txt = self.text_encoder(text_ids, text_mask, train=train)
      out["txt"] = self._pool("txt_align")(txt["tokens"], text_mask)
      feats.append(out["txt"])
    fused = jnp.concatenate(feats, -1)
    out["score"] = nn.Dense(1, name="fuse")(fused)[:, 0]
    out["log_temperature"] = self.param(
        "log_temperature", nn.initializers.constant(np.log(self.temperature_init)), ())
    return out


def from_config(cfg, vocab_size: int | None) -> BMQA:
  """Builds the model a config describes (`bmqa_jax.defaults.base_config().model`)."""
  from bmqa_jax.models import image, text  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(cfg.model.dtype)
  img = image.create(cfg.model.image.name, dtype=dtype, **cfg.model.image.kwargs)
  txt = None
  if "text" in cfg.model.modalities:
    if vocab_size is None:
      raise ValueError("a model with a text tower needs the tokenizer's vocab_size")
    txt = text.create(cfg.model.text.name, vocab_size, dtype=dtype,
                      **cfg.model.text.kwargs)
  a = cfg.model.align
  return BMQA(image_encoder=img, text_encoder=txt,
              modalities=tuple(cfg.model.modalities), align_width=a.width,
              align_heads=a.heads, align_qkv_dim=a.qkv_dim, align_mlp_dim=a.mlp_dim,
              temperature_init=cfg.model.temperature_init, dtype=dtype)
