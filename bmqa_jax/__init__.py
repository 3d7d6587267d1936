"""bmqa_jax: blind multimodal quality assessment of low-light images (BMQA) in JAX.

  import bmqa_jax
  metric = bmqa_jax.create_metric()   # the model shipped in the package
  metric("photo.jpg")                 # array([0.43]): predicted MOS in [0, 1], higher is better

`create_metric` (bmqa_jax.bmqa.scoring) is imported on first use, so that
`import bmqa_jax` stays light: the commands restart themselves with glibc's
huge-page tunable before anything imports JAX (bmqa_jax/cli).
"""

__version__ = "0.1.0"  # setup.cfg reads it (version = attr: bmqa_jax.__version__)
__all__ = ["create_metric", "__version__"]


def __getattr__(name: str):
  if name == "create_metric":
    from bmqa_jax.bmqa import scoring  # pylint: disable=g-import-not-at-top

    return scoring.create_metric
  raise AttributeError(f"module 'bmqa_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + ["create_metric"])
