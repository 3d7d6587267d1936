r"""Writes the built-in MLIQ-like low-light dataset (deterministic from --seed).

  bmqa-build-dataset --out=data/builtin --num_scenes=200

Training configs build it on first use; this command builds it explicitly, e.g.
to inspect it or to point `--config.data.builtin_dir` at it. A folder that holds
the same complete build is reused; a non-empty folder holding anything else is
refused (the message names the differences) unless --overwrite replaces another
built-in dataset there (the new one is renamed into place when complete).
"""

import time

from absl import flags

from bmqa_jax.data import builtin

_OUT = flags.DEFINE_string("out", None, "Output folder.")
_NUM_SCENES = flags.DEFINE_integer("num_scenes", 200, "Scenes (5 captures each).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 160, "Side of the stored images.")
_SEED = flags.DEFINE_integer("seed", 0, "Everything follows from this seed.")
_AUDIO = flags.DEFINE_bool(
  "audio",
  True,
  "Speak the descriptions when a speech synthesiser is installed (the `speech` extra).",
)
_WORKERS = flags.DEFINE_integer("workers", 0, "Processes (0: one per CPU).")
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace a different (or an interrupted) built-in dataset in --out."
)
flags.mark_flag_as_required("out")


def main(argv):
  del argv
  t = time.time()
  args = builtin.BuildArgs(
    num_scenes=_NUM_SCENES.value,
    image_size=_IMAGE_SIZE.value,
    seed=_SEED.value,
    audio=_AUDIO.value,
    workers=_WORKERS.value,
  )
  path = builtin.build(_OUT.value, args, overwrite=_OVERWRITE.value)
  print(f"{path} is ready ({time.time() - t:.1f} s)")
