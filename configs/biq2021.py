r"""Image-only BMQA on real dark photos: the low-light part of BIQ2021.

BIQ2021's darkest training images (1,444 real photos, 512×512, MOS in [0, 1], no
text, fixed train/val split; see ../shared/data/README.md). Only the image
path runs (there is no description for PT or SS); the validation split doubles
as the test split.

The default recipe reads the photos at their native scale and keeps the
ImageNet-pretrained tower frozen (the README's "Real photos" section has the
measurements behind each choice):

* input: `mode='native'`, 512-px windows (the whole photo here; larger photos
  are scored as the mean over `eval_grid` windows), never resized: the noise
  and blur that low-light quality is made of stay in the pixels;
* tower: EfficientNet-Lite0 with its real ImageNet weights, frozen; the
  alignment reads four stages (`levels=(1, 2, 4, 6)`: strides 4, 8, 16, 32),
  each summarised by the per-cell mean and standard deviation of its tokens on
  a 4×4 grid (`token_grid=4`), pooled by its own Eq. 7 and fused;
* five independently initialised alignment + probe heads (`ensemble=5`),
  each trained on its own MSE, averaged: one head's validation SRCC varies by
  ±0.015 with its initialisation, their mean does not;
* stage ST trains the alignment and the probe (Eq. 10, MSE of Eq. 14) from
  the frozen tower's cached features (`bmqa_jax/bmqa/feature_cache.py`): the tower
  runs once per photo and view (the photo and its mirror image).

  python launch/train.py --config=configs/biq2021.py --workdir=runs/biq_lite0
  python launch/evaluate.py --workdir=runs/biq_lite0

Arguments (`--config=configs/biq2021.py:recipe=lpft,...`):
  recipe=probe|lpft|finetune   probe (default): frozen tower, cached features;
      lpft: the probe stage, then stage FT trains the whole model at
      `ft_lr` from those weights (LP-FT, Kumar et al. 2022);
      finetune: the previous recipe, the whole model trained at 128 px from
      the start (resized input, last token map only).
  manifest=PATH, img=NAME, init=imagenet|none|DIR, crop=PIXELS (native window),
  grid=R (an R×R evaluation grid), epochs=N, batch=N, lr=X, ft_epochs=N,
  ft_lr=X, levels=1.2.4.6 (dot-separated stage indices; 'none': the last
  token map), token_grid=G, ensemble=K (probe heads averaged; 1: one head).
"""

from bmqa_jax import defaults
from bmqa_jax.models.image.pretrained import default_init

MANIFEST = "../shared/data/biq2021_lowlight/manifest.csv"
KNOWN = {"recipe", "manifest", "img", "init", "crop", "grid", "epochs", "batch",
         "lr", "ft_epochs", "ft_lr", "levels", "token_grid", "size", "trainable",
         "ensemble"}


def get_config(arg: str | None = None):
  args = defaults.parse_args(arg, KNOWN)
  recipe = args.get("recipe", "probe")
  if recipe not in ("probe", "lpft", "finetune"):
    raise ValueError(f"recipe={recipe!r}: 'probe', 'lpft' or 'finetune'")
  c = defaults.base_config()
  c.data.kind = "manifest"
  c.data.manifest = args.get("manifest", MANIFEST)
  c.data.test_split = "val"
  c.model.modalities = ("image",)
  img = args.get("img", "efficientnet_lite0")
  c.stages = "st"
  c.eval.batch_size = 16
  if recipe == "finetune":  # the recipe before native scale (for comparison)
    c.model.image = dict(name=img, init=args.get("init", default_init(img)), kwargs={})
    c.model.align = dict(width=256, heads=8, qkv_dim=256, mlp_dim=512)
    size = int(args.get("size", 128))
    c.input.update(image_size=size, resize_size=int(size * 1.14), crop_scale=(0.3, 1.0))
    c.st.update(init="fresh", epochs=float(args.get("epochs", 5)),
                batch_size=int(args.get("batch", 32)),
                learning_rate=float(args.get("lr", 5e-4)), schedule="cosine",
                warmup_epochs=1, decay_boundaries_epochs=(),
                trainable=args.get("trainable", ".*"), checkpoint_every_steps=100)
    return c
  levels = args.get("levels", "1.2.4.6")
  c.model.image = dict(
      name=img, init=args.get("init", default_init(img)), kwargs={},
      levels=() if levels == "none" else tuple(int(x) for x in levels.split(".")),
      token_grid=int(args.get("token_grid", 4)))
  c.model.align = dict(width=128, heads=8, qkv_dim=128, mlp_dim=256)
  c.model.ensemble = int(args.get("ensemble", 5))
  grid = int(args.get("grid", 1))
  c.input.update(mode="native", native_crop=int(args.get("crop", 512)),
                 eval_grid=(grid, grid), flip=True)
  c.st.update(init="fresh", epochs=float(args.get("epochs", 20)),
              batch_size=int(args.get("batch", 32)),
              learning_rate=float(args.get("lr", 3e-4)), schedule="cosine",
              warmup_epochs=1, weight_decay=0.05, decay_boundaries_epochs=(),
              trainable=defaults.frozen_tower_regex(), checkpoint_every_steps=200)
  if recipe == "lpft":
    defaults.probe_then_finetune(c, probe={}, finetune=dict(
        epochs=float(args.get("ft_epochs", 1)), batch_size=8, grad_accum_steps=2,
        learning_rate=float(args.get("ft_lr", 2e-5)), schedule="cosine",
        weight_decay=0.05, checkpoint_every_steps=40, log_every_steps=10))
  return c
