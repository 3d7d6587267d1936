r"""Quickstart: all three stages on the built-in low-light data, minutes on a CPU.

Small towers (`resnet_tiny`, a 2-layer Transformer) and a narrow alignment head
so that PT → SS → ST and the evaluation finish on a 2-core laptop. Run:

  python launch/train.py --config=configs/quickstart.py --workdir=runs/quickstart
  python launch/evaluate.py --workdir=runs/quickstart

Arguments (`--config=configs/quickstart.py:modalities=image,tiny=True`; the
rules of every config's argument: bmqa_jax/config_args.py):
  modalities=image|image+text   image: image-only BMQA (no description; SS and
                     PT need text, so only ST runs) for the image-only vs
                     image+text comparison; default image+text.
  img=NAME           another image tower (bmqa_jax.models.image.names());
                     EfficientNet-Lite starts from its ImageNet weights.
  init=imagenet|none|DIR   the image tower's initial weights
                     (docs/models.md); default: imagenet where packaged.
  tiny=True|False    True: a few steps per stage, for tests and smoke runs.
"""

from bmqa_jax import config_args
from bmqa_jax import defaults
from bmqa_jax.models.image.pretrained import default_init

MODALITIES = {"image": ("image",), "image+text": ("image", "text")}


def get_config(arg: str | None = None):
  args = config_args.parse_arg(
    arg, modalities="image+text", img="resnet_tiny", init=None, tiny=False
  )
  if args.modalities not in MODALITIES:
    raise ValueError(f"modalities={args.modalities!r}: one of {sorted(MODALITIES)}")
  c = defaults.base_config()
  defaults.quickstart_sizes(c)
  init = default_init(args.img) if args.init is None else args.init
  c.model.image = dict(name=args.img, init=init, kwargs={})
  c.model.text = dict(
    name="transformer",
    kwargs=dict(width=128, depth=2, num_heads=4, mlp_dim=256, max_len=c.input.max_text_len),
  )
  if args.modalities == "image":
    c.model.modalities = MODALITIES["image"]
    c.stages = "st"
    c.st.init = "fresh"
  if args.tiny:
    c.data.builtin = defaults.builtin_data(tiny=True)
    c.input.image_size = 32
    c.input.resize_size = 36
    c.tokenizer.vocab_size = 120
    c.model.text.kwargs.update(width=32, depth=1, num_heads=2, mlp_dim=64)
    c.model.align = dict(width=32, heads=4, qkv_dim=32, mlp_dim=64)
    for s in ("pt", "ss", "st"):
      c[s].update(epochs=2, batch_size=8, checkpoint_every_steps=4, log_every_steps=2)
    c.eval.batch_size = 8
  return c
