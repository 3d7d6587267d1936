"""Captioning image files with a trained captioner (Eq. 16) and drawing its
per-word attention maps (paper Fig. 11).

``load_captioner(workdir)`` restores the weights a training run left in
``workdir`` (nothing of the optimiser is built or read).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from bmqa_jax import config_bases
from bmqa_jax.captioner import decode as decode_lib
from bmqa_jax.captioner import model as model_lib
from bmqa_jax.captioner import vocab as vocab_lib
from bmqa_jax.data import image_io
from bmqa_jax.data import pipeline
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import workdir as workdir_lib

__all__ = [
  "CONFIG_FILE",
  "VOCAB_FILE",
  "load_captioner",
  "caption_paths",
  "describe_paths",
  "save_attention_maps",
]

CONFIG_FILE = "captioner_config.json"
VOCAB_FILE = "captioner_vocab.json"


def complete_config(stored):
  """A captioner's stored config read as today's (`config_bases.complete`)."""
  return config_bases.complete(stored, "captioner")


def load_captioner(workdir: str):
  """``(config, model, variables, vocab)`` of the latest checkpoint in ``workdir``."""
  if not os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
    raise FileNotFoundError(
      f"{os.path.join(workdir, CONFIG_FILE)} not found: is "
      f"{workdir} a captioner workdir (launch/train_captioner.py)?"
    )
  cfg = workdir_lib.load_config(workdir, CONFIG_FILE, complete_config)
  vocab = vocab_lib.Vocab.load(os.path.join(workdir, VOCAB_FILE))
  model = model_lib.from_config(cfg, len(vocab))
  variables, _ = checkpoint.load_weights(os.path.join(workdir, "checkpoints"))
  return cfg, model, {k: v for k, v in variables.items() if v}, vocab


def caption_paths(
  workdir: str, paths: Sequence[str], beam_size: int | None = None, loaded=None
) -> list[dict]:
  """Per path: ``caption`` (text), ``words`` and ``attention`` [len(words) + 1, L]
  (one row per word and one for <eos>; [len(words), L] when the caption reached
  ``config.decode.max_len`` without <eos>).

  Images get the evaluation transform of the captioner's config (resize the
  short side, centre crop). ``beam_size`` None: the config's. ``loaded``: the
  result of ``load_captioner(workdir)``, to avoid restoring it again.
  """
  cfg, model, variables, vocab = loaded or load_captioner(workdir)
  k = cfg.decode.beam_size if beam_size is None else beam_size
  recs = [dict(path=p, index=np.int32(i)) for i, p in enumerate(paths)]
  out = [None] * len(paths)
  for b in pipeline.eval_batches(recs, pipeline.from_config(cfg), cfg.eval_batch_size, local=True):
    ids, alphas, _ = decode_lib.beam_search(
      model, variables, jnp.asarray(b["image"]), k, cfg.decode.max_len, cfg.decode.length_penalty
    )
    for j in np.flatnonzero(b["valid"]):
      words, att = decode_lib.to_words(vocab, ids[j], alphas[j])
      out[int(b["index"][j])] = dict(
        path=paths[int(b["index"][j])],
        words=words,
        caption=vocab_lib.detokenize(words),
        attention=att,
      )
  return out


def describe_paths(workdir: str, paths: Sequence[str]) -> list[str]:
  """Generated quality descriptions of image files (the config's beam size)."""
  return [r["caption"] for r in caption_paths(workdir, paths)]


def save_attention_maps(result: dict, out_dir: str, cfg) -> list[str]:
  """One PNG per generated word: the (centre-cropped) image with the word's
  attention map, bilinearly upsampled, overlaid; plus ``<stem>_all.png``, a grid
  of every word. Returns the files written."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  size = cfg.input.image_size
  img = pipeline.center_crop(image_io.read_image_uint8(result["path"]), cfg.input.resize_size, size)
  att = np.asarray(result["attention"])
  side = int(round(np.sqrt(att.shape[1])))
  if side * side != att.shape[1]:
    raise ValueError(
      f"{att.shape[1]} attention positions are not a square grid (an encoder with a class token?)"
    )
  stem = os.path.splitext(os.path.basename(result["path"]))[0]
  os.makedirs(out_dir, exist_ok=True)
  words = result["words"] + ["<eos>"] * (len(att) > len(result["words"]))
  maps = [
    np.asarray(
      Image.fromarray(a.reshape(side, side).astype(np.float32)).resize((size, size), Image.BILINEAR)
    )
    for a in att
  ]
  written = []

  def draw(ax, word, m):
    ax.imshow(img)
    ax.imshow(m, cmap="jet", alpha=0.5, extent=(0, size, size, 0))
    ax.set_title(word, fontsize=9)
    ax.axis("off")

  for t, (word, m) in enumerate(zip(words, maps)):
    fig = Figure(figsize=(2.5, 2.6), dpi=100)
    ax = fig.subplots()
    draw(ax, word, m)
    safe = re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_") or "punct"
    path = os.path.join(out_dir, f"{stem}_{t:02d}_{safe}.png")
    fig.savefig(path, bbox_inches="tight")
    written.append(path)
  cols = min(6, len(words)) or 1
  rows = (len(words) + cols - 1) // cols
  fig = Figure(figsize=(2 * cols, 2.2 * rows), dpi=90)
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, word, m in zip(axes.ravel(), words, maps):
    draw(ax, word, m)
  fig.suptitle(result["caption"], fontsize=8, wrap=True)
  path = os.path.join(out_dir, f"{stem}_all.png")
  fig.savefig(path, bbox_inches="tight")
  written.append(path)
  return written
