r"""Table 1: BMQA with each image encoder × text encoder, the paper's training.

The 15 combinations of Table 1 are `img` ∈ {vgg19, resnet50, efficientnet_b4,
vit_b32, convnext_base} × `txt` ∈ {bow, rnn, transformer} (rnn = a GRU; `lstm`
also works); any other registered encoder name is accepted
(`bmqa_jax.models.image.names()`, `bmqa_jax.models.text.names()`). Stages PT →
SS → ST with the hyperparameters of Sec. 5.1.3 (bmqa_jax/defaults.py): PT 50
epochs, batch 768, lr 1e-3 cosine; SS 20 epochs, batch 256, lr 4e-5; ST 300
epochs, batch 16, lr 8e-5 (VGG, ResNet, EfficientNet) or 6.4e-5 (ViT,
ConvNeXt), ×0.95 at epochs 150 and 250.

On MLIQ (an MLIQ-style manifest, docs/interfaces.md) with MS-COCO caption pairs for PT:

  python launch/train.py --workdir=runs/mliq_cnxt_transf \
      --config=configs/mliq.py:img=convnext_base,txt=transformer,data=manifest,manifest=/data/mliq/manifest.csv,pretrain_manifest=/data/coco/captions.csv
  python launch/evaluate.py --workdir=runs/mliq_cnxt_transf
  python launch/report.py runs/mliq_*      # Table 1 with the paper's numbers

On the built-in data (the default; PT batch 128, the built-in data is small):

  python launch/train.py --config=configs/mliq.py:img=resnet50,txt=bow --workdir=runs/mliq_rn50_bow

Smoke run on a CPU (`runlocal`: the small encoder of the same family at 96 px,
quickstart's epochs and batches):

  python launch/train.py --config=configs/mliq.py:img=vit_b32,txt=rnn,runlocal=True \
      --workdir=runs/mliq_local

Arguments (`key=value`, comma-separated; the rules: bmqa_jax/config_args.py):
  img=NAME                 image tower (default resnet50)
  txt=NAME                 text tower (default transformer; Table 1's rnn and
                           transf are aliases of gru and transformer)
  data=builtin|manifest    the training data (default builtin)
  manifest=PATH            data=manifest: the MLIQ-style manifest
  pretrain_manifest=PATH   data=manifest: PT's caption pairs ('' none)
  init=DIR                 converted image-tower weights, see
                           docs/models.md ('' none)
  runlocal=True|False      True: the CPU smoke-run size above
Any field can be overridden on the command line (`--config.st.epochs=10`,
`--config.mesh.model=2`).
"""

from bmqa_jax import config_args
from bmqa_jax import defaults

TABLE1_IMAGE = ("vgg19", "resnet50", "efficientnet_b4", "vit_b32", "convnext_base")
TABLE1_TEXT = ("bow", "rnn", "transformer")
_ROW = {
  "bow": "bow",
  "gru": "rnn",
  "lstm": "rnn",
  "rnn": "rnn",
  "transformer": "transformer",
  "transf": "transformer",
}


def get_config(arg: str | None = None):
  args = config_args.parse_arg(arg, img="resnet50", txt="transformer", **defaults.PAPER_ARGS)
  c = defaults.paper_config(args.img, args.txt, args)
  if args.img in TABLE1_IMAGE and _ROW.get(args.txt) in TABLE1_TEXT:
    c.paper_ref = f"table1/{args.img}+{_ROW[args.txt]}"
  return c
