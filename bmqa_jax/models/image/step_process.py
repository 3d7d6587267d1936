"""A benchmark step in a process of its own (`benchmark.row`)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import traceback

import jax

# jax.config entries a step's process takes over from the parent's
# (runtime.start: the compilation cache).
_JAX_SETTINGS = (
  "jax_compilation_cache_dir",
  "jax_persistent_cache_min_compile_time_secs",
  "jax_persistent_cache_min_entry_size_bytes",
)


def _cpu() -> tuple[float, float]:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime, usage.ru_stime


def _serve(conn, make_step, step_args: tuple, settings: dict) -> None:
  """A `StepProcess`'s loop: builds the step, then runs one per request and
  answers when it is done with the CPU seconds (user, system) of the
  process's threads during the step (or with the traceback of a failure);
  the caller times the call."""
  try:
    for key, value in settings.items():
      jax.config.update(key, value)
    run = make_step(*step_args)
    conn.send("ready")
    while conn.recv():
      before = _cpu()
      run()
      conn.send(tuple(b - a for a, b in zip(before, _cpu())))
  except Exception:  # pylint: disable=broad-except
    conn.send(traceback.format_exc())


@contextlib.contextmanager
def _environment(environ: dict | None):
  """os.environ replaced by `environ` (None: kept) for as long as it lasts."""
  if environ is None:
    yield
    return
  saved = dict(os.environ)
  os.environ.clear()
  os.environ.update(environ)
  try:
    yield
  finally:
    os.environ.clear()
    os.environ.update(saved)


class StepProcess:
  """The step that ``make_step(*step_args)`` returns (`benchmark.jax_step` or
  `benchmark.torch_step`: one library's step) in a process of its own,
  as users run them: in one process the two share glibc's heap, libgomp and
  the order of what ran before (later models ran slower there). A call runs
  one step there and returns when it is done; the process is spawned (a
  forked JAX would deadlock) with this process's environment (XLA_FLAGS
  included), or `environ` where given, and takes the parent's compilation
  cache settings."""

  def __init__(self, make_step, *step_args, environ: dict | None = None):
    self.name = f"{make_step.__name__} {step_args[:2]}"
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    settings = {k: getattr(jax.config, k) for k in _JAX_SETTINGS}
    self._process = ctx.Process(
      target=_serve, daemon=True, args=(child, make_step, step_args, settings)
    )
    with _environment(environ):
      self._process.start()
    child.close()
    self._answer()

  def _answer(self):
    try:
      answer = self._conn.recv()
    except EOFError:
      self._process.join(5)
      raise RuntimeError(
        f"the {self.name} step process died (exit code {self._process.exitcode})"
      ) from None
    if isinstance(answer, str) and answer != "ready":
      raise RuntimeError(f"the {self.name} step failed in its process:\n{answer}")
    return answer

  def __call__(self) -> tuple[float, float]:
    """Runs a step; returns the CPU seconds (user, system) its process spent
    in it: unlike the wall time, they do not grow much when other jobs share
    the cores (system time: the kernel's work for the step, page faults)."""
    self._conn.send(True)
    return self._answer()

  def close(self):
    try:
      self._conn.send(False)
    except OSError:  # the process is gone already
      pass
    self._process.join(30)
    if self._process.is_alive():
      self._process.kill()
