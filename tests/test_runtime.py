"""Launch scripts keep XLA's compiled programs (bmqa_jax/runtime.py): a second
launch/score.py loads them instead of compiling again."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTO = os.path.join(ROOT, "..", "shared", "data", "biq2021_lowlight", "images")


def test_score_fills_and_reuses_the_compilation_cache(tmp_path):
  photo = sorted(glob.glob(os.path.join(PHOTO, "*.jpg")))[:1]
  if not photo:
    import numpy as np  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top

    photo = [str(tmp_path / "dark.png")]
    Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 40).astype(np.uint8)).save(
      photo[0]
    )
  cache = tmp_path / "xla"
  run = lambda: subprocess.run(
    [sys.executable, "launch/score.py", f"--compilation_cache={cache}"] + photo,
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  entries = sorted(os.listdir(cache))
  assert entries  # the scoring program was written
  second = run()
  assert second.returncode == 0, second.stderr[-2000:]
  assert sorted(os.listdir(cache)) == entries  # read, not compiled and written again
  score = lambda out: out.stdout.strip().splitlines()[-1].split()[-1]
  assert score(first) == score(second)


def _tune_in_fresh_process(xla_flags):
  code = (
    "import os, jax\n"
    "from bmqa_jax import runtime\n"
    "print(runtime.tune_cpu())\n"
    "print(repr(os.environ.get('XLA_FLAGS', '')))\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(env, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip().splitlines()


def test_tune_cpu_adds_the_cpu_flags_and_keeps_the_users_choice():
  from bmqa_jax import runtime  # pylint: disable=g-import-not-at-top

  ynn, sched = (f"{k}={v}" for k, v in runtime.CPU_FLAGS.items())
  assert _tune_in_fresh_process(None) == ["True", repr(f"{ynn} {sched}")]
  assert _tune_in_fresh_process("--xla_cpu_enable_fast_math=false") == [
    "True",
    repr(f"--xla_cpu_enable_fast_math=false {ynn} {sched}"),
  ]
  # A flag the user set keeps the user's value; the others are still added.
  own = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  assert _tune_in_fresh_process(own) == ["True", repr(f"{own} {sched}")]
  both = f"{own} --xla_cpu_enable_concurrency_optimized_scheduler=true"
  assert _tune_in_fresh_process(both) == ["False", repr(both)]


def test_a_training_step_is_written_to_the_compilation_cache_without_warnings(tmp_path):
  """Every program of the image encoders can be stored (no custom call that
  XLA cannot serialise): a training step compiles into the cache silently,
  and a second process loads it instead of compiling."""
  code = (
    "import sys, warnings\n"
    "warnings.simplefilter('always')\n"
    "import jax, jax.numpy as jnp, optax\n"
    "from bmqa_jax import runtime\n"
    "from bmqa_jax.models import image\n"
    "runtime.enable_compilation_cache(sys.argv[1])\n"
    "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
    "model = image.create('resnet_tiny', num_classes=4)\n"
    "x = jnp.ones((2, 32, 32, 3))\n"
    "v = model.init(jax.random.key(0), x)\n"
    "def loss(p):\n"
    "  out, _ = model.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])\n"
    "  return optax.softmax_cross_entropy_with_integer_labels(\n"
    "      out['logits'], jnp.zeros(2, int)).mean()\n"
    "print(float(jax.jit(jax.grad(lambda p: loss(p)))(v['params'])['fc']['bias'][0]))\n"
  )
  cache = tmp_path / "xla"
  run = lambda: subprocess.run(  # noqa: E731
    [sys.executable, "-c", code, str(cache)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  first = run()
  assert first.returncode == 0, first.stderr[-2000:]
  assert "Error writing persistent compilation cache" not in first.stderr, first.stderr[-2000:]
  entries = sorted(os.listdir(cache))
  assert any("jit__lambda" in e for e in entries), entries  # the gradient program
  second = run()
  assert second.returncode == 0, second.stderr[-2000:]
  assert sorted(os.listdir(cache)) == entries and second.stdout == first.stdout
