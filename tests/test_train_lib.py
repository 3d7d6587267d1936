"""The shared training library (bmqa_jax/train_lib): the step loop's
non-finite stop, checkpoints (weights-only loads, clear mismatch errors) and the
schedule against optax's own warm-up cosine."""

import os
import signal

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from bmqa_jax import defaults
from bmqa_jax import log as log_lib
from bmqa_jax import stop
from bmqa_jax.train_lib import checkpoint
from bmqa_jax.train_lib import loop
from bmqa_jax.train_lib import optim
from bmqa_jax.train_lib import state as state_lib

SINGLE = jax.sharding.SingleDeviceSharding(jax.devices()[0])
PREFETCH = defaults.base_config().device_prefetch  # the trainers' default


def _state():
  params = {"w": jnp.ones((3,)), "b": {"c": jnp.zeros((2, 2))}}
  return state_lib.create(params, {"mean": jnp.zeros((3,))}, optax.adam(1e-2))


def _step(nan_at):
  """A step whose loss (and weights) turn NaN at step `nan_at`."""
  tx = optax.sgd(0.1)

  @jax.jit
  def step(state, batch, rng):
    del rng
    loss = jnp.sum(state["params"]["w"] * batch["x"])
    loss = jnp.where(state["step"] + 1 == nan_at, jnp.nan, loss)
    grads = jax.tree.map(lambda p: p * 0 + loss, state["params"])
    st = dict(state, opt_state=tx.init(state["params"]))
    new, m = state_lib.apply_gradients(st, grads, tx, state["batch_stats"], {"loss": loss})
    return dict(new, opt_state=state["opt_state"]), m

  return step


def test_non_finite_step_stops_before_anything_is_saved(tmp_path):
  d = str(tmp_path / "ckpt")
  mngr = checkpoint.manager(d, keep=10)
  logs = []
  with pytest.raises(loop.NonFiniteError, match="step 4 .*last finite checkpoint is step 3"):
    loop.run(
      _step(nan_at=4),
      _state(),
      lambda s: {"x": jnp.ones((3,))},
      jax.random.key(0),
      name="t",
      total_steps=10,
      mngr=mngr,
      log_every=100,
      checkpoint_every=1,
      log=logs.append,
      progress=False,
      prefetch=PREFETCH,
    )
  assert mngr.all_steps() == [1, 2, 3]
  for step in mngr.all_steps():
    w, _ = checkpoint.load_weights(d, step=step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(w))
  assert any("non-finite" in l for l in logs)


def test_loop_resumes_at_the_state_step_and_averages_logged_metrics(tmp_path):
  mngr = checkpoint.manager(str(tmp_path / "c"), keep=2)
  s = dict(_state(), step=jnp.array(6, jnp.int32))
  calls = []
  state, hist = loop.run(
    _step(nan_at=-1),
    s,
    lambda i: calls.append(i) or {"x": jnp.ones((3,))},
    jax.random.key(0),
    name="t",
    total_steps=10,
    mngr=mngr,
    log_every=2,
    checkpoint_every=5,
    progress=False,
    prefetch=PREFETCH,
  )
  assert calls == [6, 7, 8, 9] and int(state["step"]) == 10
  assert [h["step"] for h in hist] == [8, 10] and mngr.all_steps() == [10]


def test_weights_only_load_and_mismatch_error(tmp_path):
  d = str(tmp_path / "c")
  mngr = checkpoint.manager(d, keep=1)
  st = _state()
  checkpoint.save(mngr, 7, st)
  mngr.wait_until_finished()  # saves are asynchronous
  w, step = checkpoint.load_weights(d)
  assert step == 7 and set(w) == {"params", "batch_stats"}
  jax.tree.map(np.testing.assert_array_equal, w["params"], st["params"])
  other = state_lib.create({"w": jnp.ones((4,))}, {}, optax.adam(1e-2))
  with pytest.raises(checkpoint.CheckpointMismatchError, match="does not fit"):
    checkpoint.restore(d, 7, checkpoint.abstract(jax.eval_shape(lambda: other), SINGLE))
  assert checkpoint.latest_step(str(tmp_path / "none")) is None


def test_schedule_matches_optax_warmup_cosine():
  o = mlc.ConfigDict(dict(learning_rate=2e-3, schedule="cosine", final_lr_fraction=0.05))
  ours = optim.make_schedule(o, total_steps=300, warmup_steps=50)
  ref = optax.warmup_cosine_decay_schedule(0.0, 2e-3, 50, 300, end_value=2e-3 * 0.05)
  steps = np.arange(0, 320, 7)
  np.testing.assert_allclose(
    [ours(s) for s in steps], [ref(s) for s in steps], rtol=1e-6, atol=1e-12
  )


def test_unknown_optimizer_and_schedule_are_refused():
  with pytest.raises(ValueError, match="unknown schedule"):
    optim.make_schedule(mlc.ConfigDict(dict(learning_rate=1.0, schedule="x")), 10, 0)
  with pytest.raises(ValueError, match="unknown optimizer"):
    optim.make_optimizer(defaults.stage(optimizer="lamb"), 1.0)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
  """A full disk mid-write (the transcripts of issue 11 item 8: 12 of 41 lines)
  leaves the previous file whole and no temporary file behind."""
  import errno  # pylint: disable=g-import-not-at-top
  from bmqa_jax.train_lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  path = tmp_path / "out.csv"
  path.write_text("old,complete\n")

  def full(_):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(os, "fsync", full)
  with pytest.raises(OSError, match="No space"):
    workdir_lib.atomic_write(str(path), "new\n" * 1000)
  assert path.read_text() == "old,complete\n"
  assert os.listdir(tmp_path) == ["out.csv"]


def test_atomic_write_takes_bytes_or_a_writer_and_gives_the_umask_mode(tmp_path):
  """One helper for every atomic file (the feature caches write through a
  callback): a writer that raises leaves the old file and no temporary one."""
  from bmqa_jax.train_lib import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  path = str(tmp_path / "a.npz")
  workdir_lib.atomic_write(path, b"old")
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~workdir_lib.umask()

  def bad(f):
    f.write(b"half")
    raise RuntimeError("writer failed")

  with pytest.raises(RuntimeError, match="writer failed"):
    workdir_lib.atomic_write(path, bad)
  assert open(path, "rb").read() == b"old" and os.listdir(tmp_path) == ["a.npz"]
  workdir_lib.atomic_write(path, lambda f: np.savez(f, x=np.arange(3)))
  np.testing.assert_array_equal(np.load(path)["x"], np.arange(3))


def test_the_project_logger_writes_plain_lines_to_the_current_stdout(capsys):
  """`bmqa_jax.log.info`, every `log` default: the message as printed, once
  (not again through absl's root handler), on the stdout of the moment."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  absl_logging.use_absl_handler()
  try:
    log_lib.info("[ss] resumed at step 4/10 (100% of 5)")
  finally:
    logging.root.removeHandler(absl_logging.get_absl_handler())
  out, err = capsys.readouterr()
  assert (out, err) == ("[ss] resumed at step 4/10 (100% of 5)\n", "")


def test_the_three_trainers_share_one_signature():
  """`train_and_evaluate(cfg, workdir, *, log, progress, config_change)` for
  BMQA, the recogniser and the captioner (BMQA adds `describe`)."""
  import inspect  # pylint: disable=g-import-not-at-top
  from bmqa_jax.bmqa import train as bmqa_train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.captioner import train as captioner_train  # pylint: disable=g-import-not-at-top
  from bmqa_jax.speech import train as speech_train  # pylint: disable=g-import-not-at-top

  want = ["cfg", "workdir", "log", "progress", "config_change"]
  for module in (bmqa_train, speech_train, captioner_train):
    params = inspect.signature(module.train_and_evaluate).parameters
    assert list(params)[:5] == want, module.__name__
    assert [p.kind for p in params.values()][2:] == [inspect.Parameter.KEYWORD_ONLY] * (
      len(params) - 2
    ), module.__name__
    assert (params["log"].default, params["progress"].default, params["config_change"].default) == (
      log_lib.info,
      False,
      "refuse",
    )


def test_a_stop_signal_saves_the_step_under_way_and_stops(tmp_path):
  """The loop's side of bmqa_jax.stop (real signals: tests/test_multiprocess.py):
  a signal during step 3 saves step 3, off the checkpoint cadence, and raises
  `Stopped` with one line and status 143."""
  mngr = checkpoint.manager(str(tmp_path / "c"), keep=10)

  step_fn = _step(nan_at=-1)

  def step(state, batch, rng):
    if len(mngr.all_steps()) == 0 and int(state["step"]) == 2:  # during step 3
      stop._handler(signal.SIGTERM, None)  # pylint: disable=protected-access
    return step_fn(state, batch, rng)

  try:
    with pytest.raises(stop.Stopped) as e:
      loop.run(
        step,
        _state(),
        lambda i: {"x": jnp.ones((3,))},
        jax.random.key(0),
        name="t",
        total_steps=10,
        mngr=mngr,
        log_every=100,
        checkpoint_every=100,
        progress=False,
        prefetch=PREFETCH,
      )
  finally:
    stop._S.signum = stop._S.at = None  # pylint: disable=protected-access
  assert e.value.code == 143
  assert str(e.value).startswith("stopped by SIGTERM at [t] step 3: checkpoint saved")
  assert mngr.all_steps() == [3]


def test_the_loop_reads_nothing_per_step_and_prefetches_batches(tmp_path, monkeypatch):
  """Ten steps, a log and a save every five: the host reads the devices at
  those steps only (not once a step), and the batches come from the prefetch
  thread, in step order."""
  reads, calls = [], []
  device_get = jax.device_get
  monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or device_get(x))
  import threading  # pylint: disable=import-outside-toplevel

  def batch(i):
    calls.append((i, threading.current_thread().name))
    return {"x": jnp.ones((3,))}

  mngr = checkpoint.manager(str(tmp_path / "c"), keep=2)
  state, hist = loop.run(
    _step(nan_at=-1),
    _state(),
    batch,
    jax.random.key(0),
    name="t",
    total_steps=10,
    mngr=mngr,
    log_every=5,
    checkpoint_every=5,
    progress=False,
    prefetch=PREFETCH,
  )
  assert int(state["step"]) == 10 and [h["step"] for h in hist] == [5, 10]
  assert mngr.all_steps() == [5, 10]
  assert len(reads) == 5  # the start step, then per log: the flags and the window
  assert [c[0] for c in calls] == list(range(10))
  assert {c[1] for c in calls} == {"bmqa_jax.prefetch"}


def test_finite_covers_the_optimiser_state():
  """AdamW after a gradient of 1e20: the weights stay finite, the second
  moment does not; `finite` says so, and nothing of it would be saved."""
  tx = optax.adamw(1e-3)
  params = {"w": jnp.ones((3,))}
  st = state_lib.create(params, {}, tx)
  grads = {"w": jnp.full((3,), 1e20)}
  new, m = state_lib.apply_gradients(st, grads, tx, {}, {"loss": jnp.float32(1.0)})
  assert bool(state_lib.all_finite(new["params"]))
  assert not bool(m["finite"])
