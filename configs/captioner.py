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
from bmqa_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = config_args.parse_arg(arg, manifest="", encoder="resnet_tiny",
                               runlocal=False, steps=(None, int))
  runlocal = args.runlocal
  c = ml_collections.ConfigDict()
  c.seed = 0

  # The quickstart's built-in dataset (the same cache directory), or a manifest.
  c.data = defaults.task_data(args.manifest)

  c.input = ml_collections.ConfigDict(dict(
      image_size=128, resize_size=144, crop_scale=(0.6, 1.0),
      crop_ratio=(3 / 4, 4 / 3), flip=True, workers=0, prefetch=2))

  c.vocab = ml_collections.ConfigDict()
  c.vocab.min_count = 2          # rarer training words become <unk>
  c.vocab.max_len = 56           # words + punctuation of a description (longest: 54)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = args.encoder  # any image.names() entry
  c.model.encoder_kwargs = {}
  c.model.embed_dim = 128
  c.model.hidden_dim = 256
  c.model.attention_dim = 128
  c.model.dropout_rate = 0.3

  c.loss = ml_collections.ConfigDict()
  # λ of the doubly-stochastic term λ Σ_i (1 − Σ_t α_ti)². Xu et al. use λ = 1
  # with the cross entropy summed over a caption's words; ours is the mean over
  # words, so λ = 1 / (mean description length ≈ 30 words) is the same balance.
  c.loss.attention_penalty = 0.03

  # AdamW, linear warmup then cosine decay to final_lr_fraction × learning_rate.
  c.optimizer = defaults.step_optimizer(
      learning_rate=2e-3, warmup_steps=50, final_lr_fraction=0.05,
      adam_b1=0.9, adam_b2=0.999, weight_decay=1e-4, grad_clip_norm=5.0)
  c.mesh = defaults.mesh()

  c.batch_size = 32
  c.eval_batch_size = 50
  c.num_steps = 1500 if args.steps is None else args.steps
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.checkpoint_keep = 2

  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 3
  c.decode.max_len = 58           # vocab.max_len + <eos> + slack
  c.decode.length_penalty = 0.0   # final score log p / len**length_penalty

  if runlocal:
    c.data.builtin = defaults.builtin_data(tiny=True)
    c.input.image_size = 64     # 2×2 attention positions with resnet_tiny
    c.input.resize_size = 72
    c.model.embed_dim = 32
    c.model.hidden_dim = 64
    c.model.attention_dim = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_steps = 40 if args.steps is None else args.steps
    c.log_every_steps = 10
    c.checkpoint_every_steps = 20
    c.decode.beam_size = 2
  return c
