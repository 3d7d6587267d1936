"""The oneDNN weight-gradient FFI call (bmqa_jax/models/image/onednn_weight_grad.py):
equal to torch's and XLA's gradient, really in the training program, harmless
to torch's threads, and a clear fallback where it cannot be built."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax.models.image import depthwise
from bmqa_jax.models.image import layers
from bmqa_jax.models.image import onednn
from bmqa_jax.models.image import onednn_weight_grad as owg


def _need_call():
  if not onednn.available():
    pytest.skip('this jaxlib/CPU does not run oneDNN convolutions')
  if not owg.available():
    pytest.skip(f'oneDNN weight gradient unavailable: {owg.unavailable_reason()}')


@pytest.mark.parametrize('batch, size, cin, cout, kernel, stride, pads', [
    (2, 28, 3, 8, 3, 1, ((1, 1), (1, 1))),     # VGG's first layer
    (1, 30, 4, 6, 3, 1, ((1, 1), (1, 1))),     # batch of one
    (3, 56, 3, 8, 7, 2, ((3, 3), (3, 3))),     # ResNet stem, odd batch
    (5, 57, 6, 4, 3, 2, ((1, 0), (2, 1))),     # stride 2, uneven pads
    (2, 84, 5, 5, 5, 3, ((0, 2), (1, 1))),     # stride 3
])
def test_weight_gradient_equals_torch_and_xla(batch, size, cin, cout, kernel, stride, pads):
  torch = pytest.importorskip('torch')
  _need_call()
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch, size, size + 1, cin)).astype(np.float32)
  w = rng.standard_normal((kernel, kernel, cin, cout)).astype(np.float32)
  strides = (stride, stride)

  def ours(w_):
    return layers.cpu_conv_general_dilated(jnp.asarray(x), w_, strides, pads, onednn_ok=True)

  y, vjp = jax.vjp(ours, jnp.asarray(w))
  g = rng.standard_normal(y.shape).astype(np.float32)
  got = np.asarray(vjp(jnp.asarray(g))[0])
  program = jax.jit(lambda w_, g_: jax.vjp(ours, w_)[1](g_)[0]).lower(w, g).as_text()
  assert owg.TARGET in program

  _, xla_vjp = jax.vjp(lambda w_: jax.lax.conv_general_dilated(
      jnp.asarray(x), w_, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
      jnp.asarray(w))
  xla = np.asarray(xla_vjp(jnp.asarray(g))[0])

  xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2),
                               (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
  wt = torch.from_numpy(w).permute(3, 2, 0, 1).clone().requires_grad_(True)
  torch.nn.functional.conv2d(xt, wt, stride=stride).backward(
      torch.from_numpy(g).permute(0, 3, 1, 2))
  ref = wt.grad.permute(2, 3, 1, 0).numpy()
  scale = float(np.abs(ref).max())
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize('batch, height, width, channels, kernel, stride, pads', [
    (2, 28, 29, 16, 7, 1, ((3, 3), (3, 3))),   # ConvNeXt's 7×7
    (3, 21, 20, 8, 5, 2, ((1, 2), (2, 2))),    # EfficientNet's 5×5/2, TF padding, odd batch
    (1, 8, 9, 32, 3, 1, ((1, 1), (1, 1))),     # 3×3 on a small map, batch of one
])
def test_depthwise_weight_gradient_equals_torch_and_xla(batch, height, width, channels,
                                                         kernel, stride, pads):
  """ConvNeXt's and EfficientNet's depthwise kernels: ``groups`` = channels."""
  torch = pytest.importorskip('torch')
  _need_call()
  rng = np.random.default_rng(2)
  x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
  w = rng.standard_normal((kernel, kernel, 1, channels)).astype(np.float32)
  strides = (stride, stride)

  def ours(w_):
    return depthwise.depthwise_conv(jnp.asarray(x), w_, strides, pads, True)

  y, vjp = jax.vjp(ours, jnp.asarray(w))
  assert owg.depthwise_worth_it(y.shape, w.shape)
  g = rng.standard_normal(y.shape).astype(np.float32)
  got = np.asarray(vjp(jnp.asarray(g))[0])
  program = jax.jit(lambda w_, g_: jax.vjp(ours, w_)[1](g_)[0]).lower(w, g).as_text()
  assert owg.TARGET in program

  _, xla_vjp = jax.vjp(lambda w_: jax.lax.conv_general_dilated(
      jnp.asarray(x), w_, strides, pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels), jnp.asarray(w))
  xla = np.asarray(xla_vjp(jnp.asarray(g))[0])

  xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2),
                               (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
  wt = torch.from_numpy(w).permute(3, 2, 0, 1).clone().requires_grad_(True)
  torch.nn.functional.conv2d(xt, wt, stride=stride, groups=channels).backward(
      torch.from_numpy(g).permute(0, 3, 1, 2))
  ref = wt.grad.permute(2, 3, 1, 0).numpy()
  scale = float(np.abs(ref).max())
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5 * scale)


def test_grouped_weight_gradient_equals_xla():
  """Groups of several channels each (the call's general case)."""
  _need_call()
  assert owg.error_against_xla((3, 12, 11, 12), (3, 3, 4, 6), (1, 2), ((1, 1), (0, 1)),
                               groups=3) < 1e-5
  with pytest.raises(Exception, match='groups'):
    jax.jit(owg.weight_grad, static_argnums=(2, 3, 4, 5))(
        jnp.ones((1, 6, 6, 12)), jnp.ones((1, 6, 6, 6)), (3, 3, 5, 6), (1, 1),
        ((1, 1), (1, 1)), 3).block_until_ready()


def test_depthwise_small_maps_keep_the_reductions():
  """ConvNeXt's 7×7 at 7 px: oneDNN's depthwise kernel declines it and its
  generic one was slower than the per-tap reductions."""
  _need_call()
  x = jnp.ones((2, 7, 7, 16), jnp.float32)
  w = jnp.ones((7, 7, 1, 16), jnp.float32)
  grad = jax.jit(jax.grad(lambda w_: depthwise.depthwise_conv(
      x, w_, (1, 1), ((3, 3), (3, 3)), True).sum()))
  assert not owg.depthwise_worth_it((2, 7, 7, 16), w.shape)
  assert owg.TARGET not in grad.lower(w).as_text()
  want = jax.grad(lambda w_: jax.lax.conv_general_dilated(
      x, w_, (1, 1), ((3, 3), (3, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=16).sum())(w)
  np.testing.assert_allclose(grad(w), want, rtol=1e-5)


def test_call_leaves_torch_thread_count_alone():
  """torch ships the same libgomp: the call sets one OpenMP thread per chunk
  and must restore the count, or torch would train single-threaded after it."""
  torch = pytest.importorskip('torch')
  _need_call()
  torch.set_num_threads(2)
  before = torch.get_num_threads()
  x = jnp.ones((4, 8, 8, 3), jnp.float32)
  g = jnp.ones((4, 8, 8, 5), jnp.float32)
  jax.jit(owg.weight_grad, static_argnums=(2, 3, 4))(
      x, g, (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))).block_until_ready()
  assert torch.get_num_threads() == before


def test_build_failure_names_the_compiler_and_training_keeps_xla(tmp_path, monkeypatch):
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  with pytest.raises(RuntimeError, match='no-such-compiler'):
    owg.build(tmp_path / 'ext')
  assert not list((tmp_path / 'ext').glob('*'))  # no half-written library left
  monkeypatch.setenv('CXX', 'false')
  with pytest.raises(RuntimeError, match='building onednn_weight_grad.cc failed'):
    owg.build(tmp_path / 'ext')

  monkeypatch.setattr(owg, 'available', lambda: False)
  x = jnp.ones((2, 28, 28, 3), jnp.float32)
  w = jnp.ones((3, 3, 3, 4), jnp.float32)
  grad = jax.jit(jax.grad(lambda w_: layers.cpu_conv_general_dilated(
      x, w_, (1, 1), 'SAME', onednn_ok=onednn.available()).sum()))
  assert owg.TARGET not in grad.lower(w).as_text()
  want = jax.grad(lambda w_: jax.lax.conv_general_dilated(
      x, w_, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')).sum())(w)
  np.testing.assert_allclose(grad(w), want, rtol=1e-5)


def test_small_maps_keep_xla():
  """Below MIN_OUTPUT_PIXELS XLA's weight gradient was the faster one."""
  _need_call()
  x = jnp.ones((2, 14, 14, 8), jnp.float32)
  w = jnp.ones((3, 3, 8, 8), jnp.float32)
  grad = jax.jit(jax.grad(lambda w_: layers.cpu_conv_general_dilated(
      x, w_, (1, 1), 'SAME', onednn_ok=True).sum()))
  assert owg.TARGET not in grad.lower(w).as_text()
  assert owg.TARGET in jax.jit(jax.grad(lambda w_: layers.cpu_conv_general_dilated(
      jnp.ones((2, 28, 28, 8)), w_, (1, 1), 'SAME', onednn_ok=True).sum())).lower(w).as_text()


def test_turned_off_by_environment(monkeypatch):
  monkeypatch.setenv('BMQA_ONEDNN_WEIGHT_GRAD', '0')
  owg._status.cache_clear()
  try:
    assert not owg.available()
    assert 'BMQA_ONEDNN_WEIGHT_GRAD=0' in owg.unavailable_reason()
  finally:
    owg._status.cache_clear()
