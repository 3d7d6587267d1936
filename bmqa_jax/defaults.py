"""The base configuration every experiment config starts from.

Every number of a run lives here or in the experiment's file under `configs/`;
the defaults are the paper's (Sec. 4, Sec. 5.1.3) unless a comment says
otherwise. Experiment configs override fields and document the command that runs
them; any field can also be overridden on the command line
(`--config.st.epochs=5`).
"""

from __future__ import annotations

import ml_collections as mlc


def stage(**kw) -> mlc.ConfigDict:
  """One training stage; the trainer runs every stage with the same code."""
  c = mlc.ConfigDict(dict(
      loss="mse",  # 'info_nce' (Eq. 11–13) or 'mse' (Eq. 14)
      data="train",  # 'train': manifest train split; 'pretrain': caption pairs
      epochs=1.0,
      batch_size=16,  # global batch, divided over all devices
      learning_rate=1e-4,
      schedule="constant",  # 'constant' | 'cosine' | 'piecewise'
      warmup_epochs=0.0,
      decay_boundaries_epochs=(),  # piecewise: epochs where lr is multiplied
      decay_factor=1.0,  # piecewise: by this factor
      adam_b1=0.9,
      adam_b2=0.999,
      weight_decay=0.0,
      grad_clip_norm=0.0,  # 0: no clipping
      trainable=".*",  # regex over parameter paths ('img_align/...'); rest frozen
      init="previous",  # 'previous': weights of the stage before; 'fresh'
      checkpoint_every_steps=200,
      keep_checkpoints=2,
      log_every_steps=20,
      eval_split="val",  # evaluated at the end of the stage when it has MOS; '' none
  ))
  c.update(kw)
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  c.stages = "pt,ss,st"  # comma-separated names of sub-configs, run in order

  c.data = mlc.ConfigDict(dict(
      kind="builtin",  # 'builtin' (generated) or 'manifest'
      manifest="",  # kind=manifest: the CSV/JSONL (DESIGN.md §4)
      pretrain_manifest="",  # caption pairs for stage PT (image, text); '' = none
      builtin_dir="",  # '' = $BMQA_DATA_DIR or ~/.cache/bmqa_jax, keyed by args
      train_split="train",
      val_split="val",
      test_split="test",
      text_source="text",  # 'text' (manifest transcripts) or 'none' (image only)
      check_images=True,  # decode every image before training starts
      skip_bad_rows=False,  # drop bad manifest rows (counted) instead of failing
      mos_range=(0.0, 1.0),
  ))
  c.data.builtin = mlc.ConfigDict(dict(
      num_scenes=200, image_size=160, seed=0, audio=True))

  c.input = mlc.ConfigDict(dict(
      image_size=224, resize_size=256, crop_scale=(0.35, 1.0),
      crop_ratio=(3 / 4, 4 / 3), flip=True, max_text_len=48, workers=0, prefetch=2))
  c.tokenizer = mlc.ConfigDict(dict(vocab_size=1000))

  c.model = mlc.ConfigDict()
  c.model.modalities = ("image", "text")
  c.model.image = mlc.ConfigDict(dict(name="resnet50", init="", kwargs={}))
  c.model.text = mlc.ConfigDict(dict(
      name="transformer", kwargs=dict(width=512, depth=6, num_heads=8,
                                      mlp_dim=2048, max_len=64)))
  # Eq. 7–8: 32 heads, projection 2048, aligned width 1024.
  c.model.align = mlc.ConfigDict(dict(width=1024, heads=32, qkv_dim=2048,
                                      mlp_dim=2048))
  c.model.dtype = "float32"  # compute dtype; parameters stay float32
  c.model.temperature_init = 0.07
  c.model.learn_temperature = True
  c.model.temperature_range = (0.01, 1.0)

  c.mesh = mlc.ConfigDict(dict(data=-1))  # -1: all devices on the data axis

  # Sec. 5.1.3: PT 50 epochs batch 768 lr 1e-3 cosine; SS 20 epochs batch 256
  # lr 4e-5 fixed; ST 300 epochs batch 16 lr 8e-5, ×0.95 at epochs 150 and 250.
  c.pt = stage(loss="info_nce", data="pretrain", epochs=50, batch_size=768,
               learning_rate=1e-3, schedule="cosine", init="fresh", eval_split="")
  c.ss = stage(loss="info_nce", data="train", epochs=20, batch_size=256,
               learning_rate=4e-5, schedule="constant", eval_split="")
  c.st = stage(loss="mse", data="train", epochs=300, batch_size=16,
               learning_rate=8e-5, schedule="piecewise",
               decay_boundaries_epochs=(150, 250), decay_factor=0.95)
  c.eval = mlc.ConfigDict(dict(batch_size=32))
  return c
