"""The base configuration every experiment config starts from.

Every number of a run lives here or in the experiment's file under `configs/`;
the defaults are the paper's (Sec. 4, Sec. 5.1.3) unless a comment says
otherwise. Experiment configs override fields and document the command that runs
them; any field can also be overridden on the command line
(`--config.st.epochs=5`). The blocks several configs share (the built-in data,
the ASR/captioner data and optimiser, the device mesh) are built here once;
each config's own `key=value` argument is read by `bmqa_jax.config_args`.
"""

from __future__ import annotations

import ml_collections as mlc

# Batches placed on the devices ahead of the step (train_lib.loop): the default
# of every family's `config.device_prefetch`.
DEVICE_PREFETCH = 2


def builtin_data(tiny: bool = False, **overrides) -> mlc.ConfigDict:
  """`config.data.builtin`: the built-in dataset's arguments (bmqa_jax/data).

  200 scenes of 160 px with spoken descriptions, seed 0 (the quickstart's,
  shared by every config that trains on the built-in data, so they share its
  cache directory); `tiny`: 20 scenes of 64 px without audio (smoke runs and
  tests). `overrides` replace single fields."""
  c = mlc.ConfigDict(dict(num_scenes=200, image_size=160, seed=0, audio=True))
  if tiny:
    c.update(num_scenes=20, image_size=64, audio=False)
  c.update(overrides)
  return c


def task_data(manifest: str = "") -> mlc.ConfigDict:
  """`config.data` of the speech recogniser and the captioner (configs/asr.py,
  configs/captioner.py): the manifest at `manifest`, or the built-in dataset
  when it is ''; training reads split `train`, evaluation split `test`."""
  return mlc.ConfigDict(
    dict(
      kind="manifest" if manifest else "builtin",
      manifest=manifest,
      builtin=builtin_data(),
      builtin_dir="",  # '' = $BMQA_DATA_DIR or ~/.cache/bmqa_jax
      train_split="train",
      eval_split="test",
    )
  )


def mesh(**overrides) -> mlc.ConfigDict:
  """`config.mesh`: the devices as a (data, model) mesh.

  The batch is split over 'data'; with model > 1 every parameter of at least
  `shard_min_size` elements (and its optimiser state) is split over 'model'
  along its largest divisible axis. data=-1: all devices not on the model axis.
  """
  c = mlc.ConfigDict(dict(data=-1, model=1, shard_min_size=2**18))
  c.update(overrides)
  return c


def step_optimizer(
  *,
  learning_rate: float,
  warmup_steps: int,
  final_lr_fraction: float,
  adam_b1: float,
  adam_b2: float,
  weight_decay: float,
  grad_clip_norm: float,
  optimizer: str = "adamw",
  schedule: str = "cosine",
  momentum: float = 0.0,
) -> mlc.ConfigDict:
  """`config.optimizer` of the step-counted trainers (configs/asr.py,
  configs/captioner.py), in the field names of the shared training library:
  `optimizer` 'adamw' (or 'sgd' with `momentum`), `schedule` 'cosine' with
  linear warmup over `warmup_steps` down to `final_lr_fraction` of
  `learning_rate`; `grad_clip_norm` 0: no clipping."""
  return mlc.ConfigDict(
    dict(
      optimizer=optimizer,
      schedule=schedule,
      learning_rate=learning_rate,
      warmup_steps=warmup_steps,
      final_lr_fraction=final_lr_fraction,
      adam_b1=adam_b1,
      adam_b2=adam_b2,
      weight_decay=weight_decay,
      grad_clip_norm=grad_clip_norm,
      momentum=momentum,
    )
  )


def input_config(**overrides) -> mlc.ConfigDict:
  """`config.input`: the image input pipeline (bmqa_jax/data/pipeline.py reads
  every field from here; the captioner's config overrides the sizes).

  mode 'resize': random resized crops of image_size for training; resize the
  short side to resize_size and centre-crop image_size for evaluation.
  mode 'native': the camera's pixels, never resampled: random native_crop
  windows for training, the mean over an eval_grid (rows, cols) of windows
  for evaluation and scoring (bmqa_jax/data/native.py)."""
  c = mlc.ConfigDict(
    dict(
      mode="resize",
      image_size=224,
      resize_size=256,
      crop_scale=(0.35, 1.0),
      crop_ratio=(3 / 4, 4 / 3),
      native_crop=512,
      eval_grid=(1, 1),
      flip=True,
      max_text_len=48,
      workers=0,
      prefetch=2,
      # Bound on a decoded image's pixels, checked from its header before decoding
      # (a 140 KB PNG can declare 12000×12000); 0: no bound.
      max_pixels=100_000_000,
      # Where the images come from (bmqa_jax/data/prepared.py): 'prepared' decodes
      # each image of a split once into a uint8 store under prepared_dir
      # ('' = workdir/prepared); 'jpeg' decodes each file in every epoch; 'auto'
      # prepares a split whose decoded size is under prepared_max_gb.
      # prepare_short_side > 0 (mode 'resize' only) stores images resized to that
      # short side (never upscaled); 0 keeps the decoded pixels exactly.
      store="auto",
      prepared_max_gb=4.0,
      prepare_short_side=0,
      prepared_dir="",
    )
  )
  c.update(overrides)
  return c


def stage(**kw) -> mlc.ConfigDict:
  """One training stage; the trainer runs every stage with the same code."""
  c = mlc.ConfigDict(
    dict(
      # 'info_nce' (Eq. 11–13; PT strategy FM), 'mse' (Eq. 14), or the PT
      # strategies 'classify' (CL) and 'restore' (RE) of Table 2 (config.pretrain).
      loss="mse",
      data="train",  # 'train': manifest train split; 'pretrain': caption pairs
      epochs=1.0,
      batch_size=16,  # global batch, divided over all devices
      learning_rate=1e-4,
      schedule="constant",  # 'constant' | 'cosine' | 'piecewise'
      warmup_epochs=0.0,
      decay_boundaries_epochs=(),  # piecewise: epochs where lr is multiplied
      decay_factor=1.0,  # piecewise: by this factor
      optimizer="adamw",  # 'adamw' (the paper's Adam) or 'sgd' (tests)
      momentum=0.0,  # sgd only; 0: plain gradient descent
      adam_b1=0.9,
      adam_b2=0.999,
      weight_decay=0.0,
      grad_clip_norm=0.0,  # 0: no clipping
      final_lr_fraction=0.0,  # cosine: the last step's fraction of learning_rate
      trainable=".*",  # regex over parameter paths ('img_align/...'); rest frozen
      init="previous",  # 'previous': weights of the stage before; 'fresh'
      # Towers of this stage's model, e.g. ('image', 'text') for SS before an
      # image-only ST (Table 2 (c)); () = config.model.modalities.
      modalities=(),
      # Microbatches per step: the global batch is split into this many parts
      # whose gradients are averaged (BatchNorm statistics and the InfoNCE
      # negatives are then per microbatch; see bmqa_jax/bmqa/train.py).
      grad_accum_steps=1,
      checkpoint_every_steps=200,
      keep_checkpoints=2,
      log_every_steps=20,
      eval_split="val",  # evaluated at the end of the stage when it has MOS; '' none
      # When the stage freezes the image tower (`trainable` leaves image_encoder
      # out): compute its features once per image and view and train from
      # them (bmqa_jax/bmqa/feature_cache.py). False: run the frozen tower each step.
      feature_cache=True,
    )
  )
  c.update(kw)
  return c


def base_config() -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.seed = 0
  c.stages = "pt,ss,st"  # comma-separated names of sub-configs, run in order
  c.device_prefetch = DEVICE_PREFETCH

  c.data = mlc.ConfigDict(
    dict(
      kind="builtin",  # 'builtin' (generated), 'manifest' or 'tfds'
      manifest="",  # kind=manifest: the CSV/JSONL (docs/interfaces.md, Manifest)
      tfds_name="",  # kind=tfds: mliq, dark4k, nnid, biq2021, iqa_folder[/config]
      tfds_dir="",  # kind=tfds: the TFDS data_dir it was prepared in
      pretrain_manifest="",  # caption pairs for stage PT (image, text); '' = none
      # Caption pairs of stage PT: 'manifest' (pretrain_manifest, or the built-in
      # data's pretrain.csv) or 'coco' (a prepared TFDS coco_captions in coco_dir).
      pretrain_source="manifest",
      coco_dir="",  # TFDS data_dir holding coco_captions/ (never downloaded)
      coco_split="train",
      builtin_dir="",  # '' = $BMQA_DATA_DIR or ~/.cache/bmqa_jax, keyed by args
      train_split="train",
      val_split="val",
      test_split="test",
      # Descriptions: 'text' (manifest transcripts), 'audio' (the recogniser in
      # asr_workdir transcribes `audio`), 'captioner' (the captioner in
      # captioner_workdir describes each image, Eq. 16) or 'none' (image only).
      text_source="text",
      asr_workdir="",  # launch/train_asr.py workdir, for text_source='audio'
      captioner_workdir="",  # launch/train_captioner.py workdir, for 'captioner'
      check_images=True,  # decode every image before training starts
      skip_bad_rows=False,  # drop bad manifest rows (counted) instead of failing
      mos_range=(0.0, 1.0),
      # Frozen-tower features (bmqa_jax/bmqa/feature_cache.py); '' = workdir/feature_cache.
      feature_cache_dir="",
    )
  )
  c.data.builtin = builtin_data()

  c.input = input_config()
  c.tokenizer = mlc.ConfigDict(dict(vocab_size=1000))

  c.model = mlc.ConfigDict()
  c.model.modalities = ("image", "text")
  # levels: the tower's stages whose token maps the alignment reads, each
  # pooled by its own Eq. 7 and fused (() = the last map, as in the paper);
  # token_grid g > 0: per-cell mean and std of each map on a g×g grid.
  c.model.image = mlc.ConfigDict(dict(name="resnet50", init="", kwargs={}, levels=(), token_grid=0))
  c.model.text = mlc.ConfigDict(
    dict(name="transformer", kwargs=dict(width=512, depth=6, num_heads=8, mlp_dim=2048, max_len=64))
  )
  # Eq. 7–8: 32 heads, projection 2048, aligned width 1024.
  c.model.align = mlc.ConfigDict(dict(width=1024, heads=32, qkv_dim=2048, mlp_dim=2048))
  c.model.dtype = "float32"  # compute dtype; parameters stay float32
  # Image-only models: K independently initialised alignment + probe heads
  # averaged (bmqa/model.py); 1 = the paper's single head.
  c.model.ensemble = 1
  # Image-only models: w > 0 mixes a closed-form ridge probe on the pooled tower
  # features into the score, (1 − w) · heads + w · ridge (bmqa/ridge.py).
  c.model.ridge_weight = 0.0
  # The probe: 'linear' (ridge on the cell-averaged features) or 'rbf' (kernel
  # ridge, Gaussian kernel, on those and the cells' spread, projected on
  # `ridge_dims` principal axes, with room for `ridge_support` training images).
  c.model.ridge_kernel = "linear"
  c.model.ridge_support = 2048
  c.model.ridge_dims = 128
  c.model.temperature_init = 0.07
  c.model.learn_temperature = True
  c.model.temperature_range = (0.01, 1.0)

  c.mesh = mesh()  # (data, model) devices; data=-1: all not on 'model'
  c.paper_ref = ""  # e.g. 'table1/convnext_base+transformer', 'table2/e'

  # Sec. 5.1.3: PT 50 epochs batch 768 lr 1e-3 cosine; SS 20 epochs batch 256
  # lr 4e-5 fixed; ST 300 epochs batch 16 lr 8e-5, ×0.95 at epochs 150 and 250.
  c.pt = stage(
    loss="info_nce",
    data="pretrain",
    epochs=50,
    batch_size=768,
    learning_rate=1e-3,
    schedule="cosine",
    init="fresh",
    eval_split="",
  )
  c.ss = stage(
    loss="info_nce",
    data="train",
    epochs=20,
    batch_size=256,
    learning_rate=4e-5,
    schedule="constant",
    eval_split="",
  )
  c.st = stage(
    loss="mse",
    data="train",
    epochs=300,
    batch_size=16,
    learning_rate=8e-5,
    schedule="piecewise",
    decay_boundaries_epochs=(150, 250),
    decay_factor=0.95,
  )
  c.eval = mlc.ConfigDict(dict(batch_size=32))
  # Stage-PT strategies CL ('classify') and RE ('restore') (Sec. 5.3, Table 2 f–g).
  # The paper gives no numbers for them; these follow MAE (image patches) and
  # BERT (words).
  c.pretrain = mlc.ConfigDict(
    dict(
      categories=(),  # CL labels: category names the captions name; () = the
      # data's own (built-in scenes' objects, or COCO's 80)
      classify_weight_image=1.0,
      classify_weight_text=1.0,
      patch=16,  # RE: side of the blanked image patches (divides input.image_size)
      mask_ratio_image=0.5,  # RE: fraction of patches blanked
      mask_ratio_text=0.15,  # RE: fraction of words (after BOS) replaced
      mask_token_id=1,  # RE: the id that replaces them (sentencepiece <unk>)
      decoder_dim=256,  # RE: hidden width of the pixel decoder
      restore_weight_image=1.0,
      restore_weight_text=1.0,
    )
  )
  return c


# Sec. 5.1.3: ST starts at lr 8e-5 for VGG/ResNet/EfficientNet and 6.4e-5 for
# ViT/ConvNeXt (×0.95 at epochs 150 and 250 for both).
ST_LEARNING_RATE = {"vit": 6.4e-5, "convnext": 6.4e-5}
ST_LEARNING_RATE_DEFAULT = 8e-5
# Table 1's names of the text encoders → registered names (models/text.py).
TEXT_ALIASES = {"rnn": "gru", "transf": "transformer"}
# The text towers at the paper's width (512, as TransF's).
TEXT_KWARGS = {
  "bow": dict(width=512, depth=1, mlp_dim=1024),
  "gru": dict(width=512, depth=1, embed_dim=512),
  "lstm": dict(width=512, depth=1, embed_dim=512),
  "transformer": dict(width=512, depth=6, num_heads=8, mlp_dim=2048, max_len=64),
}
# runlocal: the small encoder of each family (models/image/__init__.py).
SMALL_IMAGE = {
  "vgg": "vgg_tiny",
  "resnet": "resnet_tiny",
  "efficientnet": "efficientnet_tiny",
  "vit": "vit_tiny",
  "convnext": "convnext_mini",
}


# The data and size arguments of the paper's configs (configs/mliq.py,
# configs/ablation.py), as `config_args.parse_arg` defaults: data=builtin|manifest,
# manifest=PATH and pretrain_manifest=PATH (data=manifest), init=DIR (orbax
# image-tower weights; '' none), runlocal=True (quickstart size, `runlocal`).
PAPER_ARGS = dict(data="builtin", manifest="", pretrain_manifest="", init="", runlocal=False)


def paper_config(img: str, txt: str | None, args) -> mlc.ConfigDict:
  """The base config with the paper's towers, ST learning rate and the data args.

  `img`/`txt`: registered encoder names (or Table 1's aliases rnn, transf);
  `txt=None` leaves the text tower at its default (image-only models ignore it).
  `args`: the config's parsed argument (`config_args.parse_arg`) with the
  fields of `PAPER_ARGS`.
  """
  from bmqa_jax.models import image  # pylint: disable=g-import-not-at-top

  c = base_config()
  family = image.family(img)
  c.model.image = dict(name=img, init=args.init, kwargs={})
  if txt is not None:
    txt = TEXT_ALIASES.get(txt, txt)
    c.model.text = dict(name=txt, kwargs=dict(TEXT_KWARGS.get(txt, {})))
  c.st.learning_rate = ST_LEARNING_RATE.get(family, ST_LEARNING_RATE_DEFAULT)
  if args.data == "builtin":
    # The built-in data has 160 training caption pairs: PT takes batches of 128
    # (the paper's per-GPU batch) instead of 768, every other number as in MLIQ.
    c.pt.batch_size = 128
  elif args.data == "manifest":
    c.data.kind = "manifest"
    c.data.manifest = args.manifest
    c.data.pretrain_manifest = args.pretrain_manifest
    if not c.data.manifest:
      raise ValueError("data=manifest needs manifest=PATH (an MLIQ-style manifest)")
  else:
    raise ValueError(f"data={args.data!r}: 'builtin' or 'manifest'")
  if args.runlocal:
    runlocal(c, family)
  return c


def frozen_tower_regex() -> str:
  """The `trainable` regex of a stage that trains everything but the image tower."""
  return "^(?!image_encoder/).*"


def probe_then_finetune(c: mlc.ConfigDict, *, probe: dict, finetune: dict) -> None:
  """LP-FT (Kumar et al. 2022) with the stage machinery: stage `st` trains the
  alignment and the probe on a frozen image tower (from the feature cache),
  then stage `ft` trains the whole model from those weights at a lower
  learning rate, so the pretrained features are not overwritten before the
  head can read them. `probe`/`finetune`: fields of the two stages."""
  c.st.update(trainable=frozen_tower_regex(), **probe)
  c.ft = stage(loss="mse", data="train", init="previous", **finetune)
  names = [s.strip() for s in c.stages.split(",") if s.strip()]
  if "ft" not in names:
    c.stages = ",".join(names + ["ft"])


def quickstart_sizes(c: mlc.ConfigDict) -> None:
  """The sizes and budgets of configs/quickstart.py (CPU, minutes): 96 px input,
  a 1000-piece tokenizer, a 256-wide alignment, and its epochs and batches.

  `max_text_len=96`: the longest built-in description (200 scenes, seed 0) is 87
  pieces of that tokenizer with BOS, so none is cut. A Transformer text tower
  needs `max_len >= max_text_len`."""
  c.input.update(image_size=96, resize_size=104, crop_scale=(0.5, 1.0), max_text_len=96)
  c.tokenizer.vocab_size = 1000
  c.model.align = dict(width=256, heads=8, qkv_dim=256, mlp_dim=512)
  c.model.temperature_init = 0.1
  c.pt.update(epochs=20, batch_size=32, learning_rate=1e-3, warmup_epochs=1)
  c.ss.update(epochs=6, batch_size=32, learning_rate=3e-4)
  c.st.update(
    epochs=30,
    batch_size=32,
    learning_rate=1e-3,
    schedule="cosine",
    warmup_epochs=1,
    decay_boundaries_epochs=(),
  )
  c.eval.batch_size = 64


def runlocal(c: mlc.ConfigDict, family: str) -> None:
  """Shrinks a paper config to the size of configs/quickstart.py (CPU, minutes).

  The small encoder of the same image family at 96 px, a 128-wide text tower of
  the same kind, and `quickstart_sizes`; which stages run, their losses and
  towers stay those of the config.
  """
  quickstart_sizes(c)
  small = SMALL_IMAGE[family]
  c.model.image.name = small
  c.model.image.kwargs = {"image_size": 96} if family == "vit" else {}
  rnn = dict(width=128, depth=1, embed_dim=128)
  c.model.text.kwargs = dict(
    {
      "transformer": dict(
        width=128, depth=2, num_heads=4, mlp_dim=256, max_len=c.input.max_text_len
      ),
      "bow": dict(width=128, depth=1, mlp_dim=256),
      "gru": rnn,
      "lstm": rnn,
    }.get(c.model.text.name, c.model.text.kwargs)
  )
