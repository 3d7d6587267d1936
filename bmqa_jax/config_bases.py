"""Each training family's base config, and how a stored config.json is read.

BMQA's base config is `bmqa_jax.defaults.base_config`; the speech recogniser's
and the captioner's are here (`asr_config`, `captioner_config`: configs/asr.py
and configs/captioner.py add only their arguments and smoke-run sizes). A
workdir's config.json, written by whichever version trained it, is read by
`complete`: the one place that knows renamed and removed fields and fills the
fields added since from today's defaults.
"""

from __future__ import annotations

import json

import ml_collections as mlc

from bmqa_jax import defaults


def _one_run(
  c: mlc.ConfigDict, *, adam_b2: float, num_steps: int, checkpoint_every_steps: int
) -> None:
  """The fields the families of one run (the recogniser, the captioner) share:
  AdamW with linear warmup then cosine decay to final_lr_fraction ×
  learning_rate, the mesh, and the step loop's length and cadences."""
  c.optimizer = defaults.step_optimizer(
    learning_rate=2e-3,
    warmup_steps=50,
    final_lr_fraction=0.05,
    adam_b1=0.9,
    adam_b2=adam_b2,
    weight_decay=1e-4,
    grad_clip_norm=5.0,
  )
  c.mesh = defaults.mesh()
  c.num_steps = num_steps
  c.log_every_steps = 50
  c.checkpoint_every_steps = checkpoint_every_steps
  c.keep_checkpoints = 2
  c.device_prefetch = defaults.DEVICE_PREFETCH


def asr_config(manifest: str = "") -> mlc.ConfigDict:
  """The speech recogniser's config (configs/asr.py; `manifest`: as `task_data`)."""
  c = mlc.ConfigDict()
  c.seed = 0

  # 'builtin': the built-in dataset's spoken descriptions (built on first use,
  # as by launch/build_dataset.py); 'manifest': any manifest with audio + text.
  c.data = defaults.task_data(manifest)
  c.data.cache_dir = ""  # '': WORKDIR/feature_cache

  # Passed to speech.features.featurize -> audio.log_mel.
  c.features = mlc.ConfigDict(
    dict(
      sample_rate=16000,
      window_seconds=0.025,
      hop_seconds=0.010,
      n_mels=40,
      f_min=0.0,
      f_max=8000.0,
      log_floor=1e-6,
      normalize=True,
      bucket_samples=16000,
    )
  )

  c.model = mlc.ConfigDict(
    dict(
      conv_features=(16, 16),
      conv_kernels=((11, 11), (5, 7)),
      # Time stride 3 (33 output frames/s): fast speech reaches 0.22 characters
      # per 10 ms frame, and CTC needs an output frame per character + repeats.
      conv_strides=((3, 2), (1, 2)),
      rnn_hidden=128,
      rnn_layers=2,
      relu_clip=20.0,
      bn_momentum=0.99,
      dropout_rate=0.1,
      rnn_unroll=1,
      dtype="float32",
    )
  )

  _one_run(c, adam_b2=0.98, num_steps=300, checkpoint_every_steps=100)
  c.batch_size = 16
  c.eval_batch_size = 16
  # Padded lengths in frames (10 ms): one compiled train step per bucket.
  c.frame_buckets = (512, 1024, 1536, 2048, 3072)
  c.label_multiple = 16

  c.decode = mlc.ConfigDict(dict(beam_size=8, prune_log_prob=-8.0))
  return c


def captioner_config(manifest: str = "", encoder: str = "resnet_tiny") -> mlc.ConfigDict:
  """The QSD captioner's config (configs/captioner.py; `manifest`: as
  `task_data`; `encoder`: any image.names() entry)."""
  c = mlc.ConfigDict()
  c.seed = 0

  # The quickstart's built-in dataset (the same cache directory), or a manifest.
  c.data = defaults.task_data(manifest)
  c.input = defaults.input_config(image_size=128, resize_size=144, crop_scale=(0.6, 1.0))

  c.vocab = mlc.ConfigDict()
  c.vocab.min_count = 2  # rarer training words become <unk>
  c.vocab.max_len = 56  # words + punctuation of a description (longest: 54)

  c.model = mlc.ConfigDict(
    dict(
      encoder=encoder,
      encoder_kwargs={},
      embed_dim=128,
      hidden_dim=256,
      attention_dim=128,
      dropout_rate=0.3,
    )
  )

  # λ of the doubly-stochastic term λ Σ_i (1 − Σ_t α_ti)². Xu et al. use λ = 1
  # with the cross entropy summed over a caption's words; ours is the mean over
  # words, so λ = 1 / (mean description length ≈ 30 words) is the same balance.
  c.loss = mlc.ConfigDict(dict(attention_penalty=0.03))

  _one_run(c, adam_b2=0.999, num_steps=1500, checkpoint_every_steps=250)
  c.batch_size = 32
  c.eval_batch_size = 50

  c.decode = mlc.ConfigDict()
  c.decode.beam_size = 3
  c.decode.max_len = 58  # vocab.max_len + <eos> + slack
  c.decode.length_penalty = 0.0  # final score log p / len**length_penalty
  return c


# Each family's base config; a workdir's stored config.json is read onto it
# (`complete`).
BASES = {"bmqa": defaults.base_config, "asr": asr_config, "captioner": captioner_config}

# Fields renamed since release 0.1 (old dotted name → today's), and fields
# removed (read and dropped). `complete` applies both to a stored config.json.
RENAMED_FIELDS = {
  "optimizer.b1": "optimizer.adam_b1",
  "optimizer.b2": "optimizer.adam_b2",
  "checkpoint_keep": "keep_checkpoints",
  "decode.beam_width": "decode.beam_size",
}
REMOVED_FIELDS = ("model.conv_impl",)  # the image encoders' ops follow the backend


def _is_stage(v) -> bool:
  return isinstance(v, dict) and "loss" in v and "trainable" in v


def complete(stored, family: str = "bmqa") -> mlc.ConfigDict:
  """`stored` (a config.json, dict or ConfigDict) as today's config of `family`.

  The one place where old configs are read: renamed fields take today's
  names, removed ones are dropped, and the result is merged onto today's base
  config of the family (`BASES`; for BMQA also `defaults.stage()` under any further
  stage such as `ft`), so a field added since the file was written holds its
  default and every reader can use `config.x.y` without a fall-back. Free-form
  blocks (`kwargs`, `*_kwargs`) are taken whole from `stored`.
  """
  tree = json.loads(
    stored.to_json_best_effort() if isinstance(stored, mlc.ConfigDict) else json.dumps(stored)
  )
  for field in (*RENAMED_FIELDS, *REMOVED_FIELDS):
    node, key = _parent(tree, field)
    if key in node:
      value = node.pop(key)
      if field in RENAMED_FIELDS:  # renamed within the same block
        node.setdefault(RENAMED_FIELDS[field].rsplit(".", 1)[-1], value)
  base = json.loads(BASES[family]().to_json_best_effort())
  if family == "bmqa":
    stage_base = json.loads(defaults.stage().to_json_best_effort())
    for k, v in tree.items():
      if _is_stage(v) and k not in base:
        base[k] = stage_base
  return mlc.ConfigDict(_merge(base, tree))


def _parent(tree: dict, field: str) -> tuple[dict, str]:
  """(the block holding dotted `field`, its last name); {} when there is none."""
  *path, key = field.split(".")
  for k in path:
    tree = tree.get(k) if isinstance(tree.get(k), dict) else {}
  return tree, key


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for k, v in over.items():
    free = k == "kwargs" or k.endswith("_kwargs")
    if isinstance(v, dict) and isinstance(out.get(k), dict) and not free:
      out[k] = _merge(out[k], v)
    else:
      out[k] = v
  return out
