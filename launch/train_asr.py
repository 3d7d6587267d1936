r"""Trains the speech recogniser; see configs/asr.py for the commands.

  python launch/train_asr.py --config=configs/asr.py:manifest=M.csv --workdir=DIR
"""

from bmqa_jax import huge_pages

if __name__ == "__main__":  # before JAX starts: glibc reads its tunables at exec
  huge_pages.restart()

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from bmqa_jax import runtime
from bmqa_jax.speech import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "ASR config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder (resumed when it has checkpoints).")
runtime.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  runtime.start()
  config = _CONFIG.value
  metrics = train.train_and_evaluate(config, _WORKDIR.value)
  logging.info("done: %s", metrics)
  print({k: metrics[k] for k in ("greedy", "beam")})


if __name__ == "__main__":
  app.run(main)
