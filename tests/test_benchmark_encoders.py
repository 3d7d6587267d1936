"""launch/benchmark.py times encoders (issue 13 item 4): its JSON rows carry the
figures the README's speed table is made of, and the CPU kernel choice is the
runtime's (tune_cpu) unless --nocpu_kernels."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(tmp_path, *extra):
  out = tmp_path / "rows.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
    [
      sys.executable,
      "launch/benchmark.py",
      "--models=resnet_tiny",
      "--batch=2",
      "--image_size=32",
      "--steps=1",
      "--notorch",
      "--compilation_cache=",
      f"--json={out}",
      *extra,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(env, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


def test_benchmark_rows_and_cpu_kernels(tmp_path):
  from bmqa_jax import runtime  # pylint: disable=g-import-not-at-top

  rows, stdout = _bench(tmp_path)
  assert [(r["model"], r["mode"]) for r in rows] == [
    ("resnet_tiny", "train"),
    ("resnet_tiny", "infer"),
  ]
  for r in rows:
    assert r["jax_img_s"] > 0 and r["jax_first_step_s"] > 0
    assert r["jax_cpu_s"] > 0 and 0 <= r["jax_sys_s"] <= r["jax_cpu_s"]
    assert r["torch_img_s"] is None and r["ratio"] is None and r["torch_cpu_s"] is None
  assert all(f"{k}={v}" in stdout for k, v in runtime.CPU_FLAGS.items())
  assert "load average:" in stdout and "huge pages: Flax" in stdout
  _, stdout = _bench(tmp_path, "--nocpu_kernels", "--modes=infer")
  assert not any(k in stdout for k in runtime.CPU_FLAGS)


def test_row_steps_each_library_in_a_process_of_its_own():
  """benchmark.row: Flax and PyTorch each in a spawned process, stepped in turn;
  a step that fails there raises here with the child's traceback."""
  pytest.importorskip("torchvision")
  from bmqa_jax.models.image import benchmark  # pylint: disable=g-import-not-at-top

  r = benchmark.row("resnet18", "train", 2, 32, benchmark.Options(steps=2, num_classes=10))
  assert r["jax_img_s"] > 0 and r["torch_img_s"] > 0
  assert r["ratio"] == pytest.approx(r["jax_img_s"] / r["torch_img_s"])
  assert r["jax_cpu_s"] > 0 and r["torch_cpu_s"] > 0
  with pytest.raises(RuntimeError, match=r"step failed in its process:(.|\n)*resnet_tiny"):
    benchmark.row("resnet_tiny", "infer", 2, 32, benchmark.Options(steps=1))


def _environment_step(name):
  """A step (for StepProcess) that fails unless its process has name=child."""
  value = os.environ.get(name)

  def run():
    if value != "child":
      raise AssertionError(f"{name}={value!r} in the step's process")

  return run


def test_step_process_starts_with_the_environment_it_is_given(monkeypatch):
  """The PyTorch reference is started without bmqa_jax.huge_pages's tunable."""
  from bmqa_jax.models.image import step_process  # pylint: disable=g-import-not-at-top

  monkeypatch.setenv("BMQA_TEST_STEP_ENV", "parent")
  run = step_process.StepProcess(
    _environment_step, "BMQA_TEST_STEP_ENV", environ={**os.environ, "BMQA_TEST_STEP_ENV": "child"}
  )
  try:
    run()
  finally:
    run.close()
  assert os.environ["BMQA_TEST_STEP_ENV"] == "parent"
  with pytest.raises(RuntimeError, match="BMQA_TEST_STEP_ENV='parent'"):
    parent = step_process.StepProcess(_environment_step, "BMQA_TEST_STEP_ENV")
    try:
      parent()
    finally:
      parent.close()
