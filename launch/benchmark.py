r"""Image-encoder speed, Flax against the PyTorch reference in the same run (issue 3).

    python launch/benchmark.py --models=resnet50,vit_b32 --batch=8 [--json=FILE]

For each encoder and mode it times, after ``--warmup`` untimed steps
(compilation included there), ``--steps`` steps of

* ``train``: forward in training mode (BatchNorm batch statistics, dropout and
  stochastic depth on), softmax cross-entropy on a 1000-class head, backward,
  SGD-with-momentum update — one ``jax.jit`` with the state donated, and the
  same in PyTorch (``model.train()``, ``torch.optim.SGD``);
* ``infer``: the eval-mode forward (``torch.inference_mode`` for PyTorch),

and prints images/s for both and the ratio (Flax / PyTorch; > 1: Flax is faster).
``--json FILE`` writes ``[{"model", "mode", "batch", "jax_img_s", "torch_img_s",
"ratio"}]``. torch is imported lazily; with ``--notorch`` only Flax is timed.
Compute dtype: ``--dtype=bfloat16`` (Flax activations; PyTorch autocast on GPU).
XLA options are set through the ``XLA_FLAGS`` environment variable.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bmqa_jax.models import image

_MODELS = flags.DEFINE_list('models', ['resnet50', 'vit_b32', 'convnext_base',
                                       'efficientnet_b4', 'vgg19'], 'Encoders.')
_MODES = flags.DEFINE_list('modes', ['train', 'infer'], 'train and/or infer.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Batch size.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input side.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps first (compilation).')
_LR = flags.DEFINE_float('learning_rate', 0.01, 'SGD learning rate.')
_MOMENTUM = flags.DEFINE_float('momentum', 0.9, 'SGD momentum.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classifier size.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time the PyTorch reference.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads (0: default).')
_JSON = flags.DEFINE_string('json', None, 'Write the results here as JSON.')


def _time(step, state, steps, warmup):
  for _ in range(warmup):
    state = step(state)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state = step(state)
  jax.block_until_ready(state)
  return (time.perf_counter() - start) / steps


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


def jax_seconds_per_step(name, mode, batch, size):
  dtype = jnp.dtype(_DTYPE.value)
  kwargs = {'num_classes': _NUM_CLASSES.value, 'dtype': dtype}
  if image.family(name) == 'vit':
    kwargs['image_size'] = size
  model = image.create(name, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32))
  labels = jnp.asarray(rng.integers(0, _NUM_CLASSES.value, batch))
  variables = random_variables(model, x)
  params = variables['params']
  stats = variables.get('batch_stats', {})
  # Images and labels are arguments, never closed-over constants: XLA would
  # constant-fold whatever depends on them alone (e.g. the stem's patches).
  if mode == 'infer':
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)['logits'])
    return _time(lambda out: forward(variables, x), None, _STEPS.value, _WARMUP.value)

  tx = optax.sgd(_LR.value, momentum=_MOMENTUM.value)

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
  state = (params, stats, tx.init(params), jax.random.key(1))
  return _time(lambda state: step(state, x, labels), state, _STEPS.value, _WARMUP.value)


_TORCHVISION = {'vit_b32': 'vit_b_32', 'vit_b16': 'vit_b_16'}


def torch_seconds_per_step(name, mode, batch, size):
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top
  if _TORCH_THREADS.value:
    torch.set_num_threads(_TORCH_THREADS.value)
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  if name.startswith('efficientnet_lite'):
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top
    model = EfficientNet.from_name(name.replace('_', '-'), image_size=None,
                                   num_classes=_NUM_CLASSES.value)
  elif image.family(name) == 'vit':
    model = getattr(torchvision.models, _TORCHVISION[name])(
        num_classes=_NUM_CLASSES.value, image_size=size)
  else:
    model = getattr(torchvision.models, name)(num_classes=_NUM_CLASSES.value)
  model = model.to(device)
  x = torch.randn(batch, 3, size, size, device=device)
  labels = torch.randint(0, _NUM_CLASSES.value, (batch,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=_DTYPE.value == 'bfloat16' and device == 'cuda')
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  if mode == 'infer':
    model.eval()

    def step():
      with torch.inference_mode(), autocast:
        model(x)
  else:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=_LR.value, momentum=_MOMENTUM.value)

    def step():
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = torch.nn.functional.cross_entropy(model(x), labels)
      loss.backward()
      opt.step()

  for _ in range(_WARMUP.value):
    step()
  sync()
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    step()
  sync()
  return (time.perf_counter() - start) / _STEPS.value


def main(argv):
  del argv
  batch, size = _BATCH.value, _IMAGE_SIZE.value
  print(f'JAX devices: {jax.devices()}  dtype={_DTYPE.value} batch={batch} size={size}')
  print('| model | mode | batch | Flax img/s | PyTorch img/s | ratio |')
  print('|---|---|---:|---:|---:|---:|')
  rows = []
  for name in _MODELS.value:
    for mode in _MODES.value:
      jax_img_s = batch / jax_seconds_per_step(name, mode, batch, size)
      torch_img_s = batch / torch_seconds_per_step(name, mode, batch, size) if _TORCH.value else None
      ratio = jax_img_s / torch_img_s if torch_img_s else None
      rows.append({'model': name, 'mode': mode, 'batch': batch, 'jax_img_s': jax_img_s,
                   'torch_img_s': torch_img_s, 'ratio': ratio})
      fmt = lambda v: '–' if v is None else f'{v:.2f}'  # noqa: E731
      print(f'| {name} | {mode} | {batch} | {fmt(jax_img_s)} | {fmt(torch_img_s)} '
            f'| {fmt(ratio)} |', flush=True)
      if _JSON.value:  # rewritten after every row: a cut-off run keeps what it measured
        with open(_JSON.value, 'w') as f:
          json.dump(rows, f, indent=1)


if __name__ == '__main__':
  app.run(main)
