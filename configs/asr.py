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
from bmqa_jax import config_bases


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, manifest="", runlocal=False, steps=(None, int))
  c = config_bases.asr_config(args.manifest)
  if args.runlocal:
    c.model.conv_features = (8, 8)
    c.model.rnn_hidden = 64
    c.model.rnn_layers = 1
    c.num_steps = 40
    c.log_every_steps = 10
    c.checkpoint_every_steps = 20
    c.decode.beam_size = 4
    c.data.builtin.num_scenes = 20
  if args.steps is not None:
    c.num_steps = args.steps
  return c
