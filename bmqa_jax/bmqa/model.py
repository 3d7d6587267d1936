"""The BMQA model (paper Fig. 8, Algorithm 1): two towers, alignment, fusion.

image → F_img (Eq. 5–6) → F̂_img (Eq. 7); description → F_aud (Eq. 3–4) → F̂_aud
(Eq. 8); score = F_fuse(concat(F̂_img, F̂_aud)) (Eq. 10), a linear probe on the
2048-wide concatenation. With `modalities=('image',)` the text tower is absent
and the probe reads F̂_img alone; with `modalities=('text',)` the image tower is
absent and the probe reads F̂_aud alone (the single-modality rows a–d of
Table 2). The output dict has `img` / `txt` only for the towers present.

`objective='classify'` or `'restore'` (stage PT strategies CL and RE, Table 2
f–g) also runs the pretraining heads of `bmqa_jax.bmqa.pretrain` and adds
their outputs; the heads' parameters exist only in variables initialised with
that objective.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bmqa_jax.models import align
from bmqa_jax.bmqa import pretrain
from bmqa_jax.bmqa import ridge as ridge_lib
from bmqa_jax.models.align import AttentivePool

Dtype = Any


MODALITIES = ("image", "text")


class BMQA(nn.Module):
  image_encoder: nn.Module | None
  text_encoder: nn.Module | None
  modalities: Sequence[str] = ("image", "text")
  align_width: int = 1024
  align_heads: int = 32
  align_qkv_dim: int = 2048
  align_mlp_dim: int = 2048
  temperature_init: float = 0.07
  # Stage-PT heads (created only when called with an objective).
  num_categories: int = 0  # CL: size of the category vocabulary
  vocab_size: int = 0  # RE: the tokenizer's vocabulary, predicted at masked words
  decoder_dim: int = 256  # RE: hidden width of the pixel decoder
  # Image features the alignment reads: the tower's `levels` (several stages,
  # each pooled by its own Eq. 7 and fused) instead of its last `tokens`.
  multi_level: bool = False
  # 0: the token maps as they are (Eq. 7); g > 0: per-cell mean and standard
  # deviation on a g×g grid (`align.grid_statistics`), parameter-free.
  token_grid: int = 0
  # Downsampling factors at which the tower also reads the image (1: as given;
  # s: the mean of s×s pixel blocks). With `token_grid`, each level's cell
  # statistics at every scale are concatenated along channels, so the cells
  # (the same regions of the photo at every scale) and the number of pooled
  # maps stay the same. A photo judged at screen size is a downscaled photo:
  # the coarse scales show the tower the blur and noise a viewer sees there.
  scales: Sequence[int] = (1,)
  # Image-only models: K > 1 independently initialised alignment + probe
  # heads on the same tower features, each trained on its own MSE; the score
  # is their mean (a deep ensemble of the probe, Lakshminarayanan et al. 2017).
  ensemble: int = 1
  # The scales whose statistics the alignment heads read (a subset of
  # `scales`; empty: all). The heads read the native scale best; a ridge probe
  # reads the coarse ones (`bmqa_jax.bmqa.ridge`).
  head_scales: Sequence[int] = ()
  # Image-only models: w > 0 adds a closed-form ridge probe on the cell-averaged
  # features of every scale; the score is (1 − w) · heads + w · ridge.
  ridge_weight: float = 0.0
  # The probe: 'linear' or 'rbf' (kernel ridge with `ridge_support` support
  # points projected on `ridge_dims` principal axes); bmqa/ridge.py.
  ridge_kernel: str = "linear"
  ridge_support: int = 2048
  ridge_dims: int = 128
  dtype: Dtype = jnp.float32

  def _pool(self, name):
    return AttentivePool(
      self.align_width,
      self.align_heads,
      self.align_qkv_dim,
      self.align_mlp_dim,
      self.dtype,
      name=name,
    )

  def tower_features(self, images, train: bool = False, encoded=None):
    """What the image alignment reads: a list of [B, N_l, C_l] arrays.

    Everything after the tower is parameter-free, so a frozen tower's output
    can be computed once and cached (`bmqa_jax.bmqa.feature_cache`).
    """
    out = encoded if encoded is not None else self.image_encoder(images, train=train)
    maps = list(out["levels"]) if self.multi_level else [out["tokens"]]
    if self.token_grid:
      maps = [align.grid_statistics(m, images.shape[1:3], self.token_grid) for m in maps]
    extra = [s for s in self.scales if s != 1]
    if extra and not self.token_grid:
      raise ValueError(
        f"scales {tuple(self.scales)} need token_grid > 0 (the scales' statistics share its cells)"
      )
    for s in extra:
      small = downsample(images, s)
      o = self.image_encoder(small, train=train)
      more = list(o["levels"]) if self.multi_level else [o["tokens"]]
      maps = [
        jnp.concatenate([m, align.grid_statistics(x, small.shape[1:3], self.token_grid)], -1)
        for m, x in zip(maps, more)
      ]
    return maps

  def _align_image(self, maps):
    return align_levels(maps, self._pool, self.align_width, self.dtype)

  @nn.compact
  def __call__(
    self,
    images=None,
    text_ids=None,
    text_mask=None,
    *,
    train: bool = False,
    train_image: bool | None = None,
    objective: str | None = None,
    image_features=None,
  ):
    """Returns dict(img (if image), txt (if text), score [B], log_temperature).

    `image_features`: the output of `tower_features` computed beforehand (a
    frozen tower's cache); the tower is then not run.

    With `objective='classify'` also `img_logits` / `txt_logits` [B, categories];
    with `objective='restore'` also `img_restored` [B, H, W, 3] and `txt_logits`
    [B, L, vocab].
    """
    unknown = set(self.modalities) - set(MODALITIES)
    if unknown or not self.modalities:
      raise ValueError(
        f"modalities {tuple(self.modalities)}: use a non-empty subset of {MODALITIES}"
      )
    if objective not in (None,) + pretrain.OBJECTIVES:
      raise ValueError(f"unknown pretraining objective {objective!r}; known: {pretrain.OBJECTIVES}")
    train_image = train if train_image is None else train_image
    out, feats = {}, []
    if "image" in self.modalities:
      if image_features is None:
        if images is None:
          raise ValueError("this model reads an image: pass images")
        img = self.image_encoder(images, train=train_image)
        image_features = self.tower_features(images, encoded=img)
        if not train_image:  # a frozen tower needs no backward pass
          image_features = [jax.lax.stop_gradient(f) for f in image_features]
      elif objective == "restore":
        raise ValueError("objective 'restore' needs the pixels, not cached features")
      maps = list(image_features)
      if self.ridge_weight and (tuple(self.modalities) != ("image",) or objective):
        raise ValueError("ridge_weight > 0 is for image-only models trained with MSE")
      if self.ensemble > 1:
        return self._with_ridge(self._ensemble(self._head_maps(maps), objective), maps)
      out["img"] = self._align_image(self._head_maps(maps))
      feats.append(out["img"])
    if "text" in self.modalities:
      if text_ids is None or text_mask is None:
        raise ValueError("this model reads a description: pass text_ids/text_mask")
      txt = self.text_encoder(text_ids, text_mask, train=train)
      out["txt"] = self._pool("txt_align")(txt["tokens"], text_mask)
      feats.append(out["txt"])
    fused = jnp.concatenate(feats, -1)
    out["score"] = nn.Dense(1, name="fuse")(fused)[:, 0]
    out["log_temperature"] = self.param(
      "log_temperature", nn.initializers.constant(np.log(self.temperature_init)), ()
    )
    if self.ridge_weight:
      out = self._with_ridge(out, maps)
    if objective == "classify":
      if self.num_categories <= 0:
        raise ValueError("objective 'classify' needs num_categories > 0")
      for k in ("img", "txt"):
        if k in out:
          out[f"{k}_logits"] = pretrain.CategoryHead(
            self.num_categories, self.dtype, name=f"pt_classify_{k}"
          )(out[k])
    elif objective == "restore":
      if "img" in out:
        out["img_restored"] = pretrain.PixelDecoder(
          self.decoder_dim, self.dtype, name="pt_restore_img"
        )(img["tokens"], images.shape[1:3])
      if "txt" in out:
        if self.vocab_size <= 0:
          raise ValueError("objective 'restore' needs vocab_size > 0")
        out["txt_logits"] = pretrain.MaskedWordHead(
          self.vocab_size, self.dtype, name="pt_restore_txt"
        )(txt["tokens"])
    return out

  def _head_maps(self, maps):
    """The channels of `head_scales` of each map (`tower_features` puts the
    native scale first, then the others in the order of `scales`)."""
    order = [1] + [s for s in self.scales if s != 1]
    if not self.head_scales or list(self.head_scales) == order:
      return maps
    unknown = set(self.head_scales) - set(order)
    if unknown:
      raise ValueError(
        f"head_scales {tuple(self.head_scales)}: {sorted(unknown)} "
        f"not among the scales {tuple(order)}"
      )
    pick = [order.index(s) for s in self.head_scales]
    out = []
    for m in maps:
      c = m.shape[-1] // len(order)
      out.append(jnp.concatenate([m[..., i * c : (i + 1) * c] for i in pick], -1))
    return out

  def _with_ridge(self, out, maps):
    if not self.ridge_weight:
      return out
    if self.ridge_kernel == "linear":
      r = ridge_lib.RidgeProbe(name="ridge")(maps)
    elif self.ridge_kernel == "rbf":
      r = ridge_lib.KernelRidgeProbe(
        len(self.scales), self.ridge_support, self.ridge_dims, name="ridge"
      )(maps)
    else:
      raise ValueError(f"ridge_kernel {self.ridge_kernel!r}: one of {ridge_lib.KERNELS}")
    w = self.ridge_weight
    return dict(out, ridge_score=r, score=(1.0 - w) * out["score"] + w * r)

  def _ensemble(self, maps, objective):
    if tuple(self.modalities) != ("image",) or objective is not None:
      raise ValueError("ensemble > 1 is for image-only models trained with MSE")
    members = nn.vmap(
      ImageProbe,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=None,
      out_axes=1,
      axis_size=self.ensemble,
    )(
      self.align_width,
      self.align_heads,
      self.align_qkv_dim,
      self.align_mlp_dim,
      self.dtype,
      name="img_probes",
    )
    vecs, scores = members(maps)  # [B, K, width], [B, K]
    log_t = self.param(
      "log_temperature", nn.initializers.constant(np.log(self.temperature_init)), ()
    )
    return {
      "img": vecs.mean(1),
      "member_scores": scores,
      "score": scores.mean(1),
      "log_temperature": log_t,
    }


def downsample(images, factor: int):
  """[B, H, W, C] → [B, H//f, W//f, C]: the mean of f×f pixel blocks (a box
  filter, exact for the normalised pixels since normalisation is affine); rows
  and columns past a multiple of f are dropped."""
  b, h, w, c = images.shape
  hh, ww = h // factor, w // factor
  if not hh or not ww:
    raise ValueError(f"a {h}×{w} image is smaller than the scale factor {factor}")
  x = images[:, : hh * factor, : ww * factor].astype(jnp.float32)
  return x.reshape(b, hh, factor, ww, factor, c).mean((2, 4)).astype(images.dtype)


def align_levels(maps, pool, width: int, dtype):
  """Eq. 7 on each feature level (`pool(name)` makes an AttentivePool); several
  levels are fused by a linear layer and a LayerNorm into one aligned vector of
  the same width. Call inside a compact method: the layers belong to it."""
  if len(maps) == 1:
    return pool("img_align")(maps[0])
  pooled = [pool(f"img_align_{i}")(m) for i, m in enumerate(maps)]
  x = nn.Dense(width, dtype=dtype, name="img_levels_fuse")(jnp.concatenate(pooled, -1))
  return nn.LayerNorm(dtype=dtype, name="img_levels_ln")(x).astype(jnp.float32)


class ImageProbe(nn.Module):
  """One member of a probe ensemble: the image alignment (Eq. 7, per level and
  fused) and the linear probe (Eq. 10) on it. Returns (vector, score)."""

  width: int
  heads: int
  qkv_dim: int
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, maps):
    pool = lambda name: AttentivePool(
      self.width, self.heads, self.qkv_dim, self.mlp_dim, self.dtype, name=name
    )
    v = align_levels(maps, pool, self.width, self.dtype)
    return v, nn.Dense(1, name="fuse")(v)[:, 0]


def from_config(cfg, vocab_size: int | None) -> BMQA:
  """Builds the model a config describes (`bmqa_jax.defaults.base_config().model`).

  The CL heads have one output per category of `bmqa_jax.data.categories.for_config`.
  """
  from bmqa_jax.data import categories  # pylint: disable=g-import-not-at-top
  from bmqa_jax.models import image, text  # pylint: disable=g-import-not-at-top

  dtype = jnp.dtype(cfg.model.dtype)
  modalities = tuple(cfg.model.modalities)
  ic = cfg.model.image
  img = txt = None
  if "image" in modalities:
    levels = tuple(ic.get("levels", ()))
    kwargs = dict(ic.kwargs, levels=levels) if levels else dict(ic.kwargs)
    img = image.create(ic.name, dtype=dtype, **kwargs)
  if "text" in modalities:
    if vocab_size is None:
      raise ValueError("a model with a text tower needs the tokenizer's vocab_size")
    txt = text.create(cfg.model.text.name, vocab_size, dtype=dtype, **cfg.model.text.kwargs)
  a = cfg.model.align
  pt = cfg.pretrain
  return BMQA(
    image_encoder=img,
    text_encoder=txt,
    modalities=modalities,
    align_width=a.width,
    align_heads=a.heads,
    align_qkv_dim=a.qkv_dim,
    align_mlp_dim=a.mlp_dim,
    temperature_init=cfg.model.temperature_init,
    num_categories=len(categories.for_config(cfg)),
    vocab_size=vocab_size or 0,
    decoder_dim=pt.decoder_dim,
    multi_level=bool(tuple(ic.get("levels", ()))),
    token_grid=int(ic.get("token_grid", 0)),
    scales=tuple(int(x) for x in ic.get("scales", (1,))),
    ensemble=int(cfg.model.ensemble),
    head_scales=tuple(int(x) for x in ic.get("head_scales", ())),
    ridge_weight=float(cfg.model.ridge_weight),
    ridge_kernel=str(cfg.model.ridge_kernel),
    ridge_support=int(cfg.model.ridge_support),
    ridge_dims=int(cfg.model.ridge_dims),
    dtype=dtype,
  )
