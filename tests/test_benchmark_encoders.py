"""launch/benchmark.py times encoders (issue 13 item 4): its JSON rows carry the
figures the README's speed table is made of, and the CPU kernel choice is the
runtime's (tune_cpu) unless --nocpu_kernels."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(tmp_path, *extra):
  out = tmp_path / "rows.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "launch/benchmark.py", "--models=resnet_tiny", "--batch=2",
       "--image_size=32", "--steps=1", "--notorch", "--compilation_cache=",
       f"--json={out}", *extra],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(env, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_benchmark_rows_and_cpu_kernels(tmp_path):
  from bmqa_jax import runtime  # pylint: disable=g-import-not-at-top
  rows, stdout = _bench(tmp_path)
  assert [(r["model"], r["mode"]) for r in rows] == [("resnet_tiny", "train"),
                                                     ("resnet_tiny", "infer")]
  for r in rows:
    assert r["jax_img_s"] > 0 and r["jax_first_step_s"] > 0
    assert r["torch_img_s"] is None and r["ratio"] is None
  assert all(f"{k}={v}" in stdout for k, v in runtime.CPU_FLAGS.items())
  _, stdout = _bench(tmp_path, "--nocpu_kernels", "--modes=infer")
  assert not any(k in stdout for k in runtime.CPU_FLAGS)
