r"""QSD captioner F_img2qsd (paper Sec. 5.5.2, Eq. 15–16): Show-Attend-Tell.

Trains on the (image, description) pairs of the built-in dataset's ``train``
split (built on first use; the MLIQ-style training of Sec. 5.5.2) and reports
top-5 word accuracy and BLEU-4 (ours and sacrebleu's) on its ``test`` split:

  python launch/train_captioner.py --config=configs/captioner.py --workdir=runs/captioner

or on any manifest with ``image``, ``text`` and ``split`` columns:

  python launch/train_captioner.py --config=configs/captioner.py:manifest=DATA/m.csv \
      --workdir=runs/captioner

Then caption images (attention maps per word as PNGs, as in the paper's Fig. 11):

  python launch/caption.py --workdir=runs/captioner --out=captions.csv \
      --attention_dir=attention photos/*.jpg

``runlocal`` shrinks model, images and steps to a smoke run of about a minute.
Arguments (comma separated ``key=value``; the rules: bmqa_jax/config_args.py):
  ``manifest=PATH``       a manifest with image + text (default '': built-in data)
  ``encoder=NAME``        the image encoder, an image-registry name (default
                          resnet_tiny)
  ``runlocal=True|False`` the smoke-run size above
  ``steps=N``             training steps (default 1500; runlocal 40)
"""

import ml_collections

from bmqa_jax import config_args
from bmqa_jax import config_bases
from bmqa_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(
    arg, manifest="", encoder="resnet_tiny", runlocal=False, steps=(None, int)
  )
  c = config_bases.captioner_config(args.manifest, args.encoder)
  if args.runlocal:
    c.data.builtin = defaults.builtin_data(tiny=True)
    c.input.image_size = 64  # 2×2 attention positions with resnet_tiny
    c.input.resize_size = 72
    c.model.embed_dim = 32
    c.model.hidden_dim = 64
    c.model.attention_dim = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_steps = 40
    c.log_every_steps = 10
    c.checkpoint_every_steps = 20
    c.decode.beam_size = 2
  if args.steps is not None:
    c.num_steps = args.steps
  return c
