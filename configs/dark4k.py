r"""Image-only BMQA, the Dark-4K protocol (paper Sec. 5.5.3, Table 4).

Dark-4K has images and MOS only, no description. The protocol: train BMQA on
image + description pairs (MLIQ-style; here the built-in data), train the QSD
captioner F_img2qsd on the same training descriptions (Sec. 5.5.2), then score
the image-only set with the image+text model as it is (no fine-tuning or
retraining), the captioner's descriptions standing in for the spoken ones
(Algorithm 1 with Eq. 16 in place of Eq. 2). Any manifest with ``image``,
``mos`` and ``scene`` columns (no ``text``) can play Dark-4K's part:

  python launch/train.py --config=configs/dark4k.py --workdir=runs/dark4k
  python launch/train_captioner.py --config=configs/captioner.py --workdir=runs/captioner
  # the built-in test split, descriptions generated instead of given:
  python launch/evaluate.py --workdir=runs/dark4k --captioner=runs/captioner
  # an image-only manifest (here the low-light part of BIQ2021, val split):
  python launch/evaluate.py --workdir=runs/dark4k --captioner=runs/captioner \
      --manifest=../shared/data/biq2021_lowlight/manifest.csv --manifest_split=val

The first command trains exactly the quickstart's image+text model (built-in
data, all three stages, given descriptions). ``config.data.captioner_workdir``
is recorded in the run, so ``--text_source=captioner`` may replace
``--captioner=DIR`` above. The generated descriptions are cached in
``WORKDIR/descriptions_captioner.csv`` and written to
``WORKDIR/eval/descriptions.csv`` beside the metrics.

Arguments (the rules: bmqa_jax/config_args.py): ``captioner=DIR``, the
captioner's workdir recorded in ``config.data.captioner_workdir`` (default
``runs/captioner``).
"""

from bmqa_jax import config_args
from bmqa_jax.configs import quickstart


def get_config(arg: str | None = None):
  args = config_args.parse_arg(arg, captioner="runs/captioner")
  c = quickstart.get_config()
  c.data.captioner_workdir = args.captioner
  # Training reads the given descriptions; evaluation switches to the
  # captioner's (launch/evaluate.py --captioner, or --text_source=captioner).
  c.data.text_source = "text"
  return c
