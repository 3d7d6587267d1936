"""Timings of one image encoder, Flax and its PyTorch reference, for
`launch/benchmark.py` (its docstring says what is timed and how)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bmqa_jax import huge_pages
from bmqa_jax.models import image
from bmqa_jax.models.image import layers
from bmqa_jax.models.image import onednn_weight_grad
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
  conv_impl: str = 'auto'  # the encoders' CPU convolution (models/image/layers.py)


def kernels_note(conv_impl: str) -> str:
  """Which kernels the Flax steps use for convolutions and their k×k and
  depthwise weight gradients."""
  if not layers.conv_general_dilated_for_backend(conv_impl):
    return 'convolutions: XLA'
  if not layers._onednn_ok(conv_impl):  # pylint: disable=protected-access
    return 'convolutions: XLA (bmqa_jax.models.image.layers forms)'
  if onednn_weight_grad.available():
    return 'convolutions: oneDNN (k×k and depthwise weight gradients: oneDNN FFI call)'
  return ('convolutions: oneDNN (k×k weight gradients: XLA, depthwise: per-tap sums; '
          f'{onednn_weight_grad.unavailable_reason()})')


def header(o: Options, batch: int, size: int) -> str:
  """What a run measures on: devices, shapes, XLA_FLAGS, kernels, huge pages."""
  torch_pages = huge_pages.status(None if o.torch_huge_pages else
                                  huge_pages.original_environ())
  return (f'JAX devices: {jax.devices()}  dtype={o.dtype} batch={batch} size={size} '
          f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}\n{kernels_note(o.conv_impl)}\n'
          f'huge pages: Flax {huge_pages.status()}; PyTorch {torch_pages}')


def _interleaved(runs: dict, steps: int, settle: int = 0) -> dict:
  """Median seconds per call of each zero-argument step in ``runs`` (warmed
  up), timed in turn: ``settle`` untimed calls and one timed call of each,
  ``steps`` rounds. A machine that slows down or speeds up during the run (a
  noisy neighbour, a CPU clock) weighs on every implementation alike, instead
  of on whichever block of steps it fell in. ``settle`` calls after a switch
  put each back in the state of a training loop (`row`); without them, for
  steps of a second or more, the first few ms after a switch are also shared
  with the other library's idle-spinning threads."""
  times = {name: [] for name in runs}
  for _ in range(steps):
    for name, run in runs.items():
      for _ in range(settle):
        run()
      start = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def _median_ms(run, steps: int) -> float:
  """Median milliseconds of ``steps`` calls of ``run`` in a row (short
  kernels: the calls right after a switch of library, slowed by the other
  one's spinning threads, fall out of the median)."""
  return _interleaved({0: run}, steps)[0] * 1e3


def random_variables(model, x, seed=0):
  """Variables of ``model`` drawn from one ``normal`` call, scaled by
  1/sqrt(fan-in) (BatchNorm scales/variances 1, offsets/means 0): compiling
  ``model.init`` costs minutes of XLA:CPU time for the big models (a threefry
  hash per parameter), and the timings do not depend on the values."""
  abstract = jax.eval_shape(model.init, jax.random.key(seed), x)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  noise = np.random.default_rng(seed).standard_normal(
      sum(int(np.prod(a.shape)) for _, a in leaves)).astype(np.float32)
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
      v = noise[offset:offset + n].reshape(a.shape) / np.sqrt(fan_in)
    offset += n
    out.append(jnp.asarray(v, a.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def jax_step(name: str, mode: str, batch: int, size: int, o: Options):
  """One Flax step of encoder `name` ('train' or 'infer') as a zero-argument
  callable that returns when the step is done; a training state carries over
  from call to call."""
  dtype = jnp.dtype(o.dtype)
  kwargs = {'num_classes': o.num_classes, 'dtype': dtype, 'conv_impl': o.conv_impl}
  if image.family(name) == 'vit':
    kwargs['image_size'] = size
  model = image.create(name, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, o.num_classes, batch))
  variables = random_variables(model, x)
  params = variables['params']
  stats = variables.get('batch_stats', {})
  # Images and labels are arguments, never closed-over constants: XLA would
  # constant-fold whatever depends on them alone (e.g. the stem's patches).
  if mode == 'infer':
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])
    return lambda: jax.block_until_ready(forward(variables, x))

  tx = optax.sgd(o.learning_rate, momentum=o.momentum)

  def loss_fn(params, stats, key, x, labels):
    out, updates = model.apply({'params': params, 'batch_stats': stats}, x, train=True,
                               mutable=['batch_stats'], rngs={'dropout': key})
    loss = optax.softmax_cross_entropy_with_integer_labels(out['logits'], labels).mean()
    return loss, updates.get('batch_stats', stats)

  def train_step(state, x, labels):
    params, stats, opt_state, key = state
    key, sub = jax.random.split(key)
    (_, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, sub, x,
                                                                  labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, key

  step = jax.jit(train_step, donate_argnums=0)
  state = [(params, stats, tx.init(params), jax.random.key(1))]

  def run():
    state[0] = jax.block_until_ready(step(state[0], x, labels))
  return run


_TORCHVISION = {'vit_b32': 'vit_b_32', 'vit_b16': 'vit_b_16'}


def torch_step(name: str, mode: str, batch: int, size: int, o: Options):
  """One PyTorch step of the torchvision (or EfficientNet-Lite) model, as
  :func:`jax_step`."""
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  if o.torch_threads:
    torch.set_num_threads(o.torch_threads)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if name.startswith('efficientnet_lite'):
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top
    model = EfficientNet.from_name(name.replace('_', '-'), image_size=None,
                                   num_classes=o.num_classes)
  elif image.family(name) == 'vit':
    model = getattr(torchvision.models, _TORCHVISION[name])(
        num_classes=o.num_classes, image_size=size)
  else:
    model = getattr(torchvision.models, name)(num_classes=o.num_classes)
  model = model.to(device)
  x = torch.randn(batch, 3, size, size, device=device)
  labels = torch.randint(0, o.num_classes, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=o.dtype == 'bfloat16' and device == 'cuda')
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if mode == 'infer':
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


def row(name: str, mode: str, batch: int, size: int, o: Options,
        with_torch: bool = True) -> dict:
  """{'model', 'mode', 'batch', 'jax_first_step_s', 'jax_img_s', 'torch_img_s',
  'ratio'} of one run: each library's step in a process of its own
  (`step_process.StepProcess`), both alive for the whole row and stepped in turn, with
  ``o.settle`` untimed steps before each timed one.

  Why settle: a step that follows a few seconds without one of its own is
  slow on this VM (Flax ResNet-50: 1.8–2.3 s instead of 1.05 after 3–6 s of
  sleep or of PyTorch steps, with 1.1–1.8 s more system time and no more page
  faults): memory left free for a few seconds goes back to the host
  (virtio-balloon free page reporting), and the next step's fresh pages cost
  the host's work as well. The second step after a switch was still slow now
  and then, the third not. A training loop steps back to back: ``o.settle``
  (default 2) untimed steps after each switch measure that.

  PyTorch runs in the environment its users have (`huge_pages.original_environ`)
  unless ``o.torch_huge_pages``.
  """
  args = (name, mode, batch, size, o)
  runs = {'jax': step_process.StepProcess(jax_step, *args)}
  try:
    start = time.perf_counter()
    runs['jax']()
    first_s = time.perf_counter() - start
    for _ in range(o.warmup - 1):
      runs['jax']()
    if with_torch:
      runs['torch'] = step_process.StepProcess(
          torch_step, *args,
          environ=None if o.torch_huge_pages else huge_pages.original_environ())
      for _ in range(o.warmup):
        runs['torch']()
    seconds = _interleaved(runs, o.steps, o.settle)
  finally:
    for run in runs.values():
      run.close()
  jax_img_s = batch / seconds['jax']
  torch_img_s = batch / seconds['torch'] if with_torch else None
  return {'model': name, 'mode': mode, 'batch': batch,
          'jax_first_step_s': first_s, 'jax_img_s': jax_img_s,
          'torch_img_s': torch_img_s,
          'ratio': jax_img_s / torch_img_s if torch_img_s else None}


def _eqns(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in its equations."""
  for eqn in jaxpr.eqns:
    yield eqn
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _eqns(inner)


def conv_geometries(name: str, batch: int, size: int) -> dict[tuple, int]:
  """{(input shape, kernel shape, strides, pads, groups): count} of the
  convolutions in encoder ``name``'s forward pass (traced with XLA's own
  convolution, so each is one ``conv_general_dilated``)."""
  kwargs = {'conv_impl': 'xla'}
  if image.family(name) == 'vit':
    kwargs['image_size'] = size
  model = image.create(name, **kwargs)
  x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  out: dict[tuple, int] = {}
  for eqn in _eqns(jaxpr.jaxpr):
    if eqn.primitive.name == 'conv_general_dilated':
      p = eqn.params
      key = (tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape),
             tuple(p['window_strides']), tuple(tuple(q) for q in p['padding']),
             p['feature_group_count'])
      out[key] = out.get(key, 0) + 1
  return out


def layer_rows(name: str, batch: int, size: int, o: Options,
               with_torch: bool = True) -> list[dict]:
  """Per distinct convolution of encoder ``name``: milliseconds of its
  forward pass, input gradient and kernel gradient with the library's CPU
  convolution (``o.conv_impl``), and with PyTorch's (channels-last,
  ``aten.convolution_backward``) when ``with_torch``. Where a network's
  training step loses time, layer by layer."""
  conv = layers.conv_general_dilated_for_backend(o.conv_impl) or jax.lax.conv_general_dilated
  rows = []
  rng = np.random.default_rng(0)
  for (xs, ws, strides, pads, groups), count in conv_geometries(name, batch, size).items():
    x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
    w = jnp.asarray(rng.standard_normal(ws) / np.sqrt(np.prod(ws[:3])), jnp.float32)

    def f(x, w, strides=strides, pads=pads, groups=groups):
      return conv(x, w, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                  feature_group_count=groups)
    g = jnp.ones(jax.eval_shape(f, x, w).shape, jnp.float32)
    fns = [jax.jit(f),
           jax.jit(lambda x, w, g: jax.vjp(lambda x_: f(x_, w), x)[1](g)[0]),
           jax.jit(lambda x, w, g: jax.vjp(lambda w_: f(x, w_), w)[1](g)[0])]
    runs = {('jax', i): functools.partial(lambda fn, *a: jax.block_until_ready(fn(*a)),
                                          fn, x, w, *([g] if i else []))
            for i, fn in enumerate(fns)}
    if with_torch:
      runs.update({('torch', i): fn for i, fn in
                   enumerate(_torch_layer_fns(xs, ws, strides, pads, groups, o))})
    for run in runs.values():
      run()
    ms = {key: _median_ms(run, o.steps) for key, run in runs.items()}
    jax_ms = [ms['jax', i] for i in range(3)]
    torch_ms = [ms['torch', i] for i in range(3)] if with_torch else None
    rows.append({'model': name, 'input': xs, 'kernel': ws, 'strides': strides,
                 'pads': pads, 'groups': groups, 'count': count,
                 'jax_ms': jax_ms, 'torch_ms': torch_ms})
  return rows


def _torch_layer_fns(xs, ws, strides, pads, groups, o: Options) -> list:
  """PyTorch's forward, input gradient and kernel gradient of one convolution
  geometry (NHWC/HWIO shapes), channels-last, as zero-argument callables."""
  import torch  # pylint: disable=g-import-not-at-top
  if o.torch_threads:
    torch.set_num_threads(o.torch_threads)
  b, h, w_, c = xs
  kh, kw, cin_g, cout = ws
  x = torch.randn(b, c, h, w_).contiguous(memory_format=torch.channels_last)
  w = torch.randn(cout, cin_g, kh, kw).contiguous(memory_format=torch.channels_last)
  # torch pads symmetrically: pad the input by the difference first.
  (pt, pb), (pl, pr) = pads
  sym = (min(pt, pb), min(pl, pr))
  if (pt, pb, pl, pr) != (sym[0], sym[0], sym[1], sym[1]):
    x = torch.nn.functional.pad(x, (pl - sym[1], pr - sym[1], pt - sym[0], pb - sym[0]))
    x = x.contiguous(memory_format=torch.channels_last)
  y = torch.nn.functional.conv2d(x, w, stride=strides, padding=sym, groups=groups)
  g = torch.ones_like(y)

  def no_grad(fn, *args):
    with torch.no_grad():
      return fn(*args)

  def backward(mask):
    return functools.partial(no_grad, torch.ops.aten.convolution_backward, g, x, w, None,
                             list(strides), list(sym), [1, 1], False, [0, 0], groups, mask)
  return [functools.partial(no_grad, torch.nn.functional.conv2d, x, w, None, strides, sym,
                            [1, 1], groups),
          backward([True, False, False]), backward([False, True, False])]


def print_layers(names, batch: int, size: int, o: Options, with_torch: bool = True,
                 json_path: str | None = None) -> list[dict]:
  """Prints :func:`layer_rows` of each encoder in ``names`` as a Markdown
  table with the sums over the network (``launch/benchmark.py --layers``);
  writes the rows to ``json_path`` when given."""
  fmt = lambda v: '–' if v is None else ' / '.join(f'{t:.1f}' for t in v)  # noqa: E731
  rows = []
  for name in names:
    print(f'\n{name}: ms forward / input gradient / kernel gradient')
    print('| input | kernel | stride | groups | × | Flax | PyTorch |')
    print('|---|---|---|---:|---:|---|---|')
    model_rows = layer_rows(name, batch, size, o, with_torch)
    for r in model_rows:
      print(f"| {r['input']} | {r['kernel']} | {r['strides']} | {r['groups']} | "
            f"{r['count']} | {fmt(r['jax_ms'])} | {fmt(r['torch_ms'])} |", flush=True)
    total = lambda key: None if model_rows[0][key] is None else [  # noqa: E731
        sum(r['count'] * r[key][i] for r in model_rows) for i in range(3)]
    print(f"| sum over the network | | | | | {fmt(total('jax_ms'))} | "
          f"{fmt(total('torch_ms'))} |")
    rows += model_rows
  if json_path:
    with open(json_path, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows
