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
Arguments (comma separated ``key=value``): ``manifest`` (path), ``encoder``
(an image-registry name), ``runlocal`` (bool), ``steps`` (int).
"""

import ml_collections

from bmqa_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = defaults.parse_args(arg, {"manifest", "encoder", "runlocal", "steps"})
  runlocal = args.get("runlocal", "false").lower() in ("1", "true", "yes")
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.kind = "manifest" if args.get("manifest") else "builtin"
  c.data.manifest = args.get("manifest", "")
  # The quickstart's built-in dataset (the same cache directory).
  c.data.builtin = ml_collections.ConfigDict(dict(
      num_scenes=200, image_size=160, seed=0, audio=True))
  c.data.builtin_dir = ""        # '' = $BMQA_DATA_DIR or ~/.cache/bmqa_jax
  c.data.train_split = "train"
  c.data.eval_split = "test"

  c.input = ml_collections.ConfigDict(dict(
      image_size=128, resize_size=144, crop_scale=(0.6, 1.0),
      crop_ratio=(3 / 4, 4 / 3), flip=True, workers=0, prefetch=2))

  c.vocab = ml_collections.ConfigDict()
  c.vocab.min_count = 2          # rarer training words become <unk>
  c.vocab.max_len = 56           # words + punctuation of a description (longest: 54)

  c.model = ml_collections.ConfigDict()
  c.model.encoder = args.get("encoder", "resnet_tiny")  # any image.names() entry
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

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 50
  c.optimizer.final_lr_fraction = 0.05
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.weight_decay = 1e-4
  c.optimizer.grad_clip_norm = 5.0

  c.batch_size = 32
  c.eval_batch_size = 50
  c.num_steps = int(args.get("steps", 1500))
  c.log_every_steps = 50
  c.checkpoint_every_steps = 250
  c.checkpoint_keep = 2

  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 3
  c.decode.max_len = 58           # vocab.max_len + <eos> + slack
  c.decode.length_penalty = 0.0   # final score log p / len**length_penalty

  if runlocal:
    c.data.builtin = ml_collections.ConfigDict(dict(
        num_scenes=20, image_size=64, seed=0, audio=False))
    c.input.image_size = 64     # 2×2 attention positions with resnet_tiny
    c.input.resize_size = 72
    c.model.embed_dim = 32
    c.model.hidden_dim = 64
    c.model.attention_dim = 32
    c.batch_size = 8
    c.eval_batch_size = 8
    c.num_steps = int(args.get("steps", 40))
    c.log_every_steps = 10
    c.checkpoint_every_steps = 20
    c.decode.beam_size = 2
  return c
