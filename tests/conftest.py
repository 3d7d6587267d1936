"""Shared test setup: quiet TensorFlow/absl logging, fast XLA compiles, one cache.

Most tests run tiny models, whose cost is XLA's compile time, not their run
time; LLVM's optimisation level 0 compiles about 30 % faster (measured on
tests/test_text_encoders.py) and keeps every numerical check within its tolerance.

The persistent compilation cache is fresh for each pytest session and shared by
the xdist workers and the subprocesses tests start (it is passed through the
environment), so a program compiled once — the tiny model's train step in the
kill-and-resume test, say — is not compiled again in the same session.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller, before workers start
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="bmqa_jax_xla_cache_"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
