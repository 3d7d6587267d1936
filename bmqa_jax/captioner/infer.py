"""Captioning image files with a trained captioner (Eq. 16) and drawing its
per-word attention maps (paper Fig. 11)."""

from __future__ import annotations

import os
import re
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from bmqa_jax.captioner import decode as decode_lib
from bmqa_jax.captioner import train as train_lib
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.data import image_io
from bmqa_jax.data import pipeline

__all__ = ["caption_paths", "describe_paths", "save_attention_maps"]


def caption_paths(workdir: str, paths: Sequence[str], beam_size: int | None = None,
                  loaded=None) -> list[dict]:
  """Per path: ``caption`` (text), ``words`` and ``attention`` [len(words) + 1, L].

  Images get the evaluation transform of the captioner's config (resize the
  short side, centre crop). ``beam_size`` None: the config's. ``loaded``: the
  result of ``train.load_captioner(workdir)``, to avoid restoring it again.
  """
  config, model, variables, vocab = loaded or train_lib.load_captioner(workdir)
  k = config.decode.beam_size if beam_size is None else beam_size
  recs = [dict(path=p, index=np.int32(i)) for i, p in enumerate(paths)]
  out = [None] * len(paths)
  for b in pipeline.eval_batches(recs, pipeline.from_config(config),
                                 config.eval_batch_size):
    ids, alphas, _ = decode_lib.beam_search(model, variables, jnp.asarray(b["image"]),
                                            k, config.decode.max_len,
                                            config.decode.length_penalty)
    for j in np.flatnonzero(b["valid"]):
      words, att = decode_lib.to_words(vocab, ids[j], alphas[j])
      out[int(b["index"][j])] = dict(path=paths[int(b["index"][j])], words=words,
                                     caption=vocab_lib.detokenize(words),
                                     attention=att)
  return out


def describe_paths(workdir: str, paths: Sequence[str]) -> list[str]:
  """Generated quality descriptions of image files (the config's beam size)."""
  return [r["caption"] for r in caption_paths(workdir, paths)]


def save_attention_maps(result: dict, out_dir: str, config) -> list[str]:
  """One PNG per generated word: the (centre-cropped) image with the word's
  attention map, bilinearly upsampled, overlaid; plus ``<stem>_all.png``, a grid
  of every word. Returns the files written."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  size = config.input.image_size
  img = pipeline.center_crop(image_io.read_image_uint8(result["path"]),
                             config.input.resize_size, size)
  att = np.asarray(result["attention"])
  side = int(round(np.sqrt(att.shape[1])))
  if side * side != att.shape[1]:
    raise ValueError(f"{att.shape[1]} attention positions are not a square grid "
                     "(an encoder with a class token?)")
  stem = os.path.splitext(os.path.basename(result["path"]))[0]
  os.makedirs(out_dir, exist_ok=True)
  words = result["words"] + ["<eos>"] * (len(att) > len(result["words"]))
  maps = [np.asarray(Image.fromarray(a.reshape(side, side).astype(np.float32))
                     .resize((size, size), Image.BILINEAR)) for a in att]
  written = []

  def draw(ax, word, m):
    ax.imshow(img)
    ax.imshow(m, cmap="jet", alpha=0.5, extent=(0, size, size, 0))
    ax.set_title(word, fontsize=9)
    ax.axis("off")

  for t, (word, m) in enumerate(zip(words, maps)):
    fig, ax = plt.subplots(figsize=(2.5, 2.6), dpi=100)
    draw(ax, word, m)
    safe = re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_") or "punct"
    path = os.path.join(out_dir, f"{stem}_{t:02d}_{safe}.png")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    written.append(path)
  cols = min(6, len(words)) or 1
  rows = (len(words) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(2 * cols, 2.2 * rows), dpi=90,
                           squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, word, m in zip(axes.ravel(), words, maps):
    draw(ax, word, m)
  fig.suptitle(result["caption"], fontsize=8, wrap=True)
  path = os.path.join(out_dir, f"{stem}_all.png")
  fig.savefig(path, bbox_inches="tight")
  plt.close(fig)
  written.append(path)
  return written
