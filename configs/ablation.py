r"""Table 2: the ablation of the training stages and modalities, methods (a)–(h).

ResNet-50 image tower, Transformer ("TransF") text tower; the hyperparameters of
Sec. 5.1.3 (bmqa_jax/defaults.py, as configs/mliq.py). `method` picks a row:

  (a) ST only, image tower only            (b) ST only, text tower only
  (c) SS with both towers, then ST image only
  (d) SS with both towers, then ST text only
  (e) SS then ST, both towers
  (f) PT by classification (CL), SS, ST    (g) PT by restoration (RE), SS, ST
  (h) PT by feature alignment (FM, InfoNCE), SS, ST — the full BMQA

In (c) and (d) the SS model has both towers and ST keeps the towers it still
has (the new fusion probe starts fresh; the log names it).

  python launch/train.py --config=configs/ablation.py:method=e --workdir=runs/ablation_e
  python launch/evaluate.py --workdir=runs/ablation_e
  python launch/report.py runs/ablation_*   # Table 2 with the paper's numbers

On MLIQ: add `,data=manifest,manifest=PATH[,pretrain_manifest=COCO_PAIRS]`. A CPU
smoke run at quickstart size: add `,runlocal=True`.

Arguments (`key=value`, comma-separated; the rules: bmqa_jax/config_args.py):
  method=a|b|c|d|e|f|g|h   the row of Table 2 (default h)
  data=builtin|manifest, manifest=PATH, pretrain_manifest=PATH, init=DIR
  (converted ResNet-50 weights), runlocal=True|False: as in configs/mliq.py.
"""

from bmqa_jax import config_args
from bmqa_jax import defaults

# method: (PT loss or '' for no PT, SS?, ST towers)
METHODS = {
  "a": ("", False, ("image",)),
  "b": ("", False, ("text",)),
  "c": ("", True, ("image",)),
  "d": ("", True, ("text",)),
  "e": ("", True, ("image", "text")),
  "f": ("classify", True, ("image", "text")),
  "g": ("restore", True, ("image", "text")),
  "h": ("info_nce", True, ("image", "text")),
}


def get_config(arg: str | None = None):
  args = config_args.parse_arg(arg, method="h", **defaults.PAPER_ARGS)
  method = args.method
  if method not in METHODS:
    raise ValueError(f"method={method!r}: one of {sorted(METHODS)} (Table 2)")
  pt_loss, ss, towers = METHODS[method]
  c = defaults.paper_config("resnet50", "transformer", args)
  c.paper_ref = f"table2/{method}"
  c.model.modalities = towers
  stages = (["pt"] if pt_loss else []) + (["ss"] if ss else []) + ["st"]
  c.stages = ",".join(stages)
  c[stages[0]].init = "fresh"
  if pt_loss:
    c.pt.loss = pt_loss
  if ss:
    c.ss.modalities = ("image", "text")  # SS aligns the two towers (Eq. 11–13)
  return c
