r"""Speech recogniser (paper Eq. 2): DeepSpeech2-style CTC on log-mel frames.

Trains on the ``train`` split of the built-in dataset's spoken descriptions
(built on first use; needs the ``speech`` extra) and reports WER/CER (jiwer) on
its ``test`` split:

  python launch/train_asr.py --config=configs/asr.py --workdir=/tmp/asr

or on any manifest with ``audio``, ``text`` and ``split`` columns:

  python launch/train_asr.py --config=configs/asr.py:manifest=DATA/manifest.csv \
      --workdir=/tmp/asr

``runlocal`` shrinks model and steps to a smoke run of a minute or two:

  python launch/train_asr.py --config=configs/asr.py:runlocal=True \
      --workdir=/tmp/asr_smoke

Then transcribe any manifest's ``audio`` column:

  python launch/transcribe.py --workdir=/tmp/asr --manifest=M.csv --out=T.csv

Arguments (comma separated ``key=value``; the rules: bmqa_jax/config_args.py):
  ``manifest=PATH``       a manifest with audio + text (default '': built-in data)
  ``runlocal=True|False`` the smoke-run size above
  ``steps=N``             training steps (default 300; runlocal 40)
"""

import ml_collections

from bmqa_jax import config_args
from bmqa_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, manifest="", runlocal=False, steps=(None, int))
  runlocal = args.runlocal
  c = ml_collections.ConfigDict()
  c.seed = 0

  # 'builtin': the built-in dataset's spoken descriptions (built on first use,
  # as by launch/build_dataset.py); 'manifest': any manifest with audio + text.
  c.data = defaults.task_data(args.manifest)
  c.data.cache_dir = ""          # empty: WORKDIR/feature_cache

  # Passed to speech.features.featurize -> audio.log_mel.
  c.features = ml_collections.ConfigDict()
  c.features.sample_rate = 16000
  c.features.window_seconds = 0.025
  c.features.hop_seconds = 0.010
  c.features.n_mels = 40
  c.features.f_min = 0.0
  c.features.f_max = 8000.0
  c.features.log_floor = 1e-6
  c.features.normalize = True
  c.features.bucket_samples = 16000

  c.model = ml_collections.ConfigDict()
  c.model.conv_features = (16, 16)
  c.model.conv_kernels = ((11, 11), (5, 7))
  # Time stride 3 (33 output frames/s): fast speech reaches 0.22 characters
  # per 10 ms frame, and CTC needs an output frame per character + repeats.
  c.model.conv_strides = ((3, 2), (1, 2))
  c.model.rnn_hidden = 128
  c.model.rnn_layers = 2
  c.model.relu_clip = 20.0
  c.model.bn_momentum = 0.99
  c.model.dropout_rate = 0.1
  c.model.rnn_unroll = 1
  c.model.dtype = "float32"

  # AdamW, linear warmup then cosine decay to final_lr_fraction × learning_rate.
  c.optimizer = defaults.step_optimizer(
      learning_rate=2e-3, warmup_steps=50, final_lr_fraction=0.05,
      adam_b1=0.9, adam_b2=0.98, weight_decay=1e-4, grad_clip_norm=5.0)
  c.mesh = defaults.mesh()

  c.batch_size = 16
  c.eval_batch_size = 16
  # Padded lengths in frames (10 ms): one compiled train step per bucket.
  c.frame_buckets = (512, 1024, 1536, 2048, 3072)
  c.label_multiple = 16
  c.num_steps = 300 if args.steps is None else args.steps
  c.log_every_steps = 50
  c.checkpoint_every_steps = 100
  c.checkpoint_keep = 2

  c.decode = ml_collections.ConfigDict()
  c.decode.beam_width = 8
  c.decode.prune_log_prob = -8.0

  if runlocal:
    c.model.conv_features = (8, 8)
    c.model.rnn_hidden = 64
    c.model.rnn_layers = 1
    c.num_steps = 40 if args.steps is None else args.steps
    c.log_every_steps = 10
    c.checkpoint_every_steps = 20
    c.decode.beam_width = 4
    c.data.builtin.num_scenes = 20
  return c
