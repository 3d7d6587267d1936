"""Timings of one image encoder, Flax and its PyTorch reference, for
`launch/benchmark.py` (its docstring says what is timed and how)."""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bmqa_jax import huge_pages
from bmqa_jax.models import image
from bmqa_jax.models.image import step_process


@dataclasses.dataclass(frozen=True)
class Options:
  dtype: str = "float32"
  num_classes: int = 1000
  learning_rate: float = 0.01
  momentum: float = 0.9
  steps: int = 3
  warmup: int = 1
  settle: int = 2  # untimed steps of a library before each timed one (row)
  torch_threads: int = 0
  torch_huge_pages: bool = False  # PyTorch without them, as its users run it


def header(o: Options, batch: int, size: int) -> str:
  """What a run measures on: devices, shapes, XLA_FLAGS, huge pages, and the
  machine's load (compare runs made idle)."""
  torch_pages = huge_pages.status(None if o.torch_huge_pages else huge_pages.original_environ())
  load = " ".join(f"{v:.1f}" for v in os.getloadavg())
  return (
    f"JAX devices: {jax.devices()}  dtype={o.dtype} batch={batch} size={size} "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n"
    f"huge pages: Flax {huge_pages.status()}; PyTorch {torch_pages}\n"
    f"load average: {load} on {os.cpu_count()} cores"
  )


def _interleaved(runs: dict, steps: int, settle: int = 0) -> dict:
  """{name: (seconds, CPU seconds, system CPU seconds)}, medians per call of
  each step in ``runs`` (warmed up; a call returns the user and system CPU
  seconds of its process, as `step_process.StepProcess`), timed in turn: ``settle`` untimed
  calls and one timed call of each, ``steps`` rounds. A machine that slows
  down or speeds up during the run (a noisy neighbour, a CPU clock) weighs on
  every implementation alike, instead of on whichever block of steps it fell
  in. ``settle`` calls after a switch put each back in the state of a training
  loop (`row`); without them, for steps of a second or more, the first few ms
  after a switch are also shared with the other library's idle-spinning
  threads."""
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      for _ in range(settle):
        run()
      start = time.perf_counter()
      user, system = run()
      times[name].append((time.perf_counter() - start, user + system, system))
  return {name: tuple(float(v) for v in np.median(t, axis=0)) for name, t in times.items()}


def random_variables(model, x, seed=0):
  """Variables of ``model`` drawn from one ``normal`` call, scaled by
  1/sqrt(fan-in) (BatchNorm scales/variances 1, offsets/means 0): compiling
  ``model.init`` costs minutes of XLA:CPU time for the big models (a threefry
  hash per parameter), and the timings do not depend on the values."""
  abstract = jax.eval_shape(model.init, jax.random.key(seed), x)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  noise = (
    np.random.default_rng(seed)
    .standard_normal(sum(int(np.prod(a.shape)) for _, a in leaves))
    .astype(np.float32)
  )
  out, offset = [], 0
  for path, a in leaves:
    n = int(np.prod(a.shape))
    leaf = jax.tree_util.keystr(path[-1:])
    if "'var'" in leaf or "'scale'" in leaf:
      v = np.ones(a.shape, np.float32)
    elif "'mean'" in leaf or "'bias'" in leaf:
      v = np.zeros(a.shape, np.float32)
    else:
      fan_in = int(np.prod(a.shape[:-1])) or 1
      v = noise[offset : offset + n].reshape(a.shape) / np.sqrt(fan_in)
    offset += n
    out.append(jnp.asarray(v, a.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def jax_step(name: str, mode: str, batch: int, size: int, o: Options):
  """One Flax step of encoder `name` ('train' or 'infer') as a zero-argument
  callable that returns when the step is done; a training state carries over
  from call to call."""
  dtype = jnp.dtype(o.dtype)
  kwargs = {"num_classes": o.num_classes, "dtype": dtype}
  if image.family(name) == "vit":
    kwargs["image_size"] = size
  model = image.create(name, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, o.num_classes, batch))
  variables = random_variables(model, x)
  params = variables["params"]
  stats = variables.get("batch_stats", {})
  # Images and labels are arguments, never closed-over constants: XLA would
  # constant-fold whatever depends on them alone (e.g. the stem's patches).
  if mode == "infer":
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    return lambda: jax.block_until_ready(forward(variables, x))

  tx = optax.sgd(o.learning_rate, momentum=o.momentum)

  def loss_fn(params, stats, key, x, labels):
    out, updates = model.apply(
      {"params": params, "batch_stats": stats},
      x,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": key},
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    return loss, updates.get("batch_stats", stats)

  def train_step(state, x, labels):
    params, stats, opt_state, key = state
    key, sub = jax.random.split(key)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, sub, x, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, key

  step = jax.jit(train_step, donate_argnums=0)
  state = [(params, stats, tx.init(params), jax.random.key(1))]

  def run():
    state[0] = jax.block_until_ready(step(state[0], x, labels))

  return run


_TORCHVISION = {"vit_b32": "vit_b_32", "vit_b16": "vit_b_16"}


def torch_step(name: str, mode: str, batch: int, size: int, o: Options):
  """One PyTorch step of the torchvision (or EfficientNet-Lite) model, as
  :func:`jax_step`."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  if o.torch_threads:
    torch.set_num_threads(o.torch_threads)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if name.startswith("efficientnet_lite"):
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top

    model = EfficientNet.from_name(
      name.replace("_", "-"), image_size=None, num_classes=o.num_classes
    )
  elif image.family(name) == "vit":
    model = getattr(torchvision.models, _TORCHVISION[name])(
      num_classes=o.num_classes, image_size=size
    )
  else:
    model = getattr(torchvision.models, name)(num_classes=o.num_classes)
  model = model.to(device)
  x = torch.randn(batch, 3, size, size, device=device)
  labels = torch.randint(0, o.num_classes, (batch,), device=device)
  autocast = torch.autocast(
    device, dtype=torch.bfloat16, enabled=o.dtype == "bfloat16" and device == "cuda"
  )
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if mode == "infer":
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        model(x)
  else:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=o.learning_rate, momentum=o.momentum)

    def step():
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
      loss.backward()
      opt.step()

  def run():
    step()
    sync()

  return run


def row(name: str, mode: str, batch: int, size: int, o: Options, with_torch: bool = True) -> dict:
  """{'model', 'mode', 'batch', 'jax_first_step_s', 'jax_img_s', 'torch_img_s',
  'ratio', 'jax_cpu_s', 'jax_sys_s', 'torch_cpu_s', 'torch_sys_s'} of one run
  (``*_cpu_s``: the median CPU seconds, user and system, of the library's
  process in a step; ``*_sys_s``: of system time): each library's step in a
  process of its own (`step_process.StepProcess`), both alive for the whole
  row and stepped in turn, with ``o.settle`` untimed steps before each timed
  one.

  Why settle: a step that follows a few seconds without one of its own can
  be much slower (on a VM that hands memory left free back to the host, the
  next step's fresh pages cost the host's work as well; docs/performance.md).
  A training loop steps back to back: ``o.settle`` untimed steps after each
  switch measure that.

  PyTorch runs in the environment its users have (`huge_pages.original_environ`)
  unless ``o.torch_huge_pages``.
  """
  args = (name, mode, batch, size, o)
  runs = {"jax": step_process.StepProcess(jax_step, *args)}
  try:
    start = time.perf_counter()
    runs["jax"]()
    first_s = time.perf_counter() - start
    for _ in range(o.warmup - 1):
      runs["jax"]()
    if with_torch:
      runs["torch"] = step_process.StepProcess(
        torch_step, *args, environ=None if o.torch_huge_pages else huge_pages.original_environ()
      )
      for _ in range(o.warmup):
        runs["torch"]()
    seconds = _interleaved(runs, o.steps, o.settle)
  finally:
    for run in runs.values():
      run.close()
  jax_img_s = batch / seconds["jax"][0]
  torch_img_s = batch / seconds["torch"][0] if with_torch else None
  out = {
    "model": name,
    "mode": mode,
    "batch": batch,
    "jax_first_step_s": first_s,
    "jax_img_s": jax_img_s,
    "torch_img_s": torch_img_s,
    "ratio": jax_img_s / torch_img_s if torch_img_s else None,
  }
  for lib in ("jax", "torch"):
    _, out[f"{lib}_cpu_s"], out[f"{lib}_sys_s"] = seconds.get(lib, (None, None, None))
  return out
