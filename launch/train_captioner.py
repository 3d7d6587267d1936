r"""Trains the QSD captioner (Show-Attend-Tell); see configs/captioner.py.

  python launch/train_captioner.py --config=configs/captioner.py --workdir=runs/captioner
"""

from bmqa_jax import huge_pages

if __name__ == "__main__":  # before JAX starts: glibc reads its tunables at exec
  huge_pages.restart()

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bmqa_jax import runtime
from bmqa_jax.captioner import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Captioner config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (resumed when it has "
                               "checkpoints).")
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  runtime.start()
  logging.set_verbosity(logging.WARNING)  # orbax logs every file at INFO
  metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  print({k: metrics[k] for k in ("top5_accuracy", "greedy", "beam")})


if __name__ == "__main__":
  app.run(main)
