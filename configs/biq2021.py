r"""Image-only BMQA on real dark photos: the low-light part of BIQ2021.

BIQ2021's darkest training images (1,444 real photos, 512×512, MOS in [0, 1], no
text, fixed train/val split; see ../shared/data/README.md). Only the image
path runs (there is no description for PT or SS); the validation split doubles
as the test split.

The default recipe reads the photos at their native scale and keeps the
ImageNet-pretrained tower frozen (docs/real_photos.md has the measurements
behind each choice):

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
* the tower also reads each window at ½ and ¼ scale (`scales=1.2.4`); the
  heads read the native scale only (`head_scales=1`: given the coarse scales
  they score lower), a closed-form kernel ridge probe (Gaussian kernel) reads
  the cell-averaged statistics of all three and how the cells' means spread
  over the photo (`bmqa_jax/bmqa/ridge.py`, fitted on the training split's
  cached features before the heads train), and the score is
  0.3 · heads + 0.7 · probe (`kernel=rbf`, `ridge=0.7`);
* stage ST trains the alignment and the probe (Eq. 10, MSE of Eq. 14) from
  the frozen tower's cached features (`bmqa_jax/bmqa/feature_cache.py`): the tower
  runs once per photo and view (the photo and its mirror image).

  python launch/train.py --config=configs/biq2021.py --workdir=runs/biq_lite0
  python launch/evaluate.py --workdir=runs/biq_lite0

Arguments (`--config=configs/biq2021.py:recipe=lpft,...`; the rules:
bmqa_jax/config_args.py):
  recipe=probe|lpft|finetune   probe (default): frozen tower, cached features;
      lpft: the probe stage, then stage FT trains the whole model at
      `ft_lr` from those weights (LP-FT, Kumar et al. 2022);
      finetune: the previous recipe, the whole model trained at `size` px
      from the start (resized input, last token map only).
  manifest=PATH            default ../shared/data/biq2021_lowlight/manifest.csv
  img=NAME                 image tower (default efficientnet_lite0)
  init=imagenet|none|DIR   its initial weights (default: imagenet where packaged)
  epochs=X, batch=N, lr=X  stage ST (defaults: 20, 32, 3e-4; finetune 5, 32, 5e-4)
  ft_epochs=X, ft_lr=X     lpft's stage FT (defaults 1, 2e-5)
  probe and lpft:  crop=PIXELS (native window, 512), grid=R (an R×R evaluation
      grid, 1), levels=1.2.4.6 (dot-separated stage indices; 'none': the last
      token map), token_grid=G (4), ensemble=K (probe heads averaged, 5; 1: one
      head), scales=1.2.4 (dot-separated downsampling factors at which the
      tower also reads each window, each level's cell statistics per scale
      concatenated; default 1.2.4, lpft 1; 1: the window as it is),
      head_scales=1 (the scales the heads read, dot-separated; default 1),
      ridge=W (the weight of the ridge probe on all the scales in the score,
      0.7 with kernel=rbf, 0.5 with kernel=linear; lpft 0; 0: the heads
      alone), kernel=rbf|linear (the probe: kernel ridge, default, or linear
      ridge). Earlier defaults: `kernel=linear` (the linear probe, weight 0.5),
      `scales=1,ridge=0` (heads on the native scale alone);
      docs/real_photos.md has the lever table behind these choices.
  finetune:  size=PIXELS (input size, 128), trainable=REGEX (parameters
      trained, '.*').
"""

from bmqa_jax import config_args
from bmqa_jax import defaults
from bmqa_jax.models.image.pretrained import default_init

MANIFEST = "../shared/data/biq2021_lowlight/manifest.csv"
RECIPES = ("probe", "lpft", "finetune")


def get_config(arg: str | None = None):
  args = config_args.parse_arg(
    arg,
    recipe="probe",
    manifest=MANIFEST,
    img="efficientnet_lite0",
    init=None,
    crop=512,
    grid=1,
    epochs=(None, float),
    batch=32,
    lr=(None, float),
    ft_epochs=1.0,
    ft_lr=2e-5,
    levels="1.2.4.6",
    token_grid=4,
    scales=None,
    head_scales="1",
    ridge=(None, float),
    kernel="rbf",
    size=128,
    trainable=".*",
    ensemble=5,
  )
  recipe = args.recipe
  if recipe not in RECIPES:
    raise ValueError(f"recipe={recipe!r}: 'probe', 'lpft' or 'finetune'")
  finetune = recipe == "finetune"
  epochs = args.epochs if args.epochs is not None else (5.0 if finetune else 20.0)
  lr = args.lr if args.lr is not None else (5e-4 if finetune else 3e-4)
  c = defaults.base_config()
  c.data.kind = "manifest"
  c.data.manifest = args.manifest
  c.data.test_split = "val"
  c.model.modalities = ("image",)
  img = args.img
  init = default_init(img) if args.init is None else args.init
  c.stages = "st"
  c.eval.batch_size = 16
  if finetune:  # the recipe before native scale (for comparison)
    c.model.image = dict(name=img, init=init, kwargs={})
    c.model.align = dict(width=256, heads=8, qkv_dim=256, mlp_dim=512)
    size = args.size
    c.input.update(image_size=size, resize_size=int(size * 1.14), crop_scale=(0.3, 1.0))
    c.st.update(
      init="fresh",
      epochs=epochs,
      batch_size=args.batch,
      learning_rate=lr,
      schedule="cosine",
      warmup_epochs=1,
      decay_boundaries_epochs=(),
      trainable=args.trainable,
      checkpoint_every_steps=100,
    )
    return c
  levels = args.levels
  # The ridge probe is fitted on the frozen tower's features: a recipe that
  # then fine-tunes the tower (lpft) keeps the heads alone at one scale.
  scales = args.scales or ("1.2.4" if recipe == "probe" else "1")
  if args.kernel not in ("linear", "rbf"):
    raise ValueError(f"kernel={args.kernel!r}: 'rbf' or 'linear'")
  ridge = args.ridge
  if ridge is None:
    ridge = (0.7 if args.kernel == "rbf" else 0.5) if recipe == "probe" else 0.0
  if ridge and recipe != "probe":
    raise ValueError(
      f"ridge={ridge}: the ridge probe reads the frozen tower's "
      "features (recipe=probe); lpft fine-tunes the tower"
    )
  c.model.image = dict(
    name=img,
    init=init,
    kwargs={},
    levels=() if levels == "none" else tuple(int(x) for x in levels.split(".")),
    token_grid=args.token_grid,
    scales=tuple(int(x) for x in str(scales).split(".")),
    head_scales=tuple(int(x) for x in str(args.head_scales).split(".")),
  )
  c.model.align = dict(width=128, heads=8, qkv_dim=128, mlp_dim=256)
  c.model.ensemble = args.ensemble
  c.model.ridge_weight = ridge
  c.model.ridge_kernel = args.kernel
  grid = args.grid
  c.input.update(mode="native", native_crop=args.crop, eval_grid=(grid, grid), flip=True)
  c.st.update(
    init="fresh",
    epochs=epochs,
    batch_size=args.batch,
    learning_rate=lr,
    schedule="cosine",
    warmup_epochs=1,
    weight_decay=0.05,
    decay_boundaries_epochs=(),
    trainable=defaults.frozen_tower_regex(),
    checkpoint_every_steps=200,
  )
  if recipe == "lpft":
    defaults.probe_then_finetune(
      c,
      probe={},
      finetune=dict(
        epochs=args.ft_epochs,
        batch_size=8,
        grad_accum_steps=2,
        learning_rate=args.ft_lr,
        schedule="cosine",
        weight_decay=0.05,
        checkpoint_every_steps=40,
        log_every_steps=10,
      ),
    )
  return c
