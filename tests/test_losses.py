"""InfoNCE (Eq. 11–13), cosine similarity (Eq. 9) and MSE (Eq. 14) against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bmqa_jax import losses


def _numpy_info_nce(img, txt, tau):
  """Independent NumPy reading of Eq. 11–13 with explicit loops."""
  b = img.shape[0]
  cos = np.zeros((b, b))
  for i in range(b):
    for j in range(b):
      cos[i, j] = img[i] @ txt[j] / (np.linalg.norm(img[i]) * np.linalg.norm(txt[j]))
  total = 0.0
  for i in range(b):
    p_img = np.exp(cos[i, i] / tau) / sum(np.exp(cos[i, k] / tau) for k in range(b))
    p_aud = np.exp(cos[i, i] / tau) / sum(np.exp(cos[k, i] / tau) for k in range(b))
    total += -(np.log(p_img) + np.log(p_aud)) / 2
  return total / b


@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_info_nce_matches_numpy(tau):
  rng = np.random.default_rng(0)
  img = rng.normal(size=(6, 16))
  txt = img + rng.normal(scale=0.7, size=(6, 16))
  got = float(
    losses.symmetric_info_nce(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), tau)
  )
  np.testing.assert_allclose(got, _numpy_info_nce(img, txt, tau), rtol=1e-5)


def test_info_nce_is_asymmetric_in_directions_but_averaged():
  rng = np.random.default_rng(1)
  img, txt = rng.normal(size=(2, 5, 8))
  a = float(losses.symmetric_info_nce(jnp.asarray(img), jnp.asarray(txt), 0.1))
  b = float(losses.symmetric_info_nce(jnp.asarray(txt), jnp.asarray(img), 0.1))
  np.testing.assert_allclose(a, b, rtol=1e-6)  # symmetric by construction


def test_info_nce_weights_drop_padded_rows():
  rng = np.random.default_rng(2)
  img, txt = rng.normal(size=(2, 7, 8)).astype(np.float32)
  full = float(losses.symmetric_info_nce(jnp.asarray(img[:5]), jnp.asarray(txt[:5]), 0.2))
  w = jnp.asarray([1, 1, 1, 1, 1, 0, 0], jnp.float32)
  padded = float(losses.symmetric_info_nce(jnp.asarray(img), jnp.asarray(txt), 0.2, w))
  np.testing.assert_allclose(padded, full, rtol=1e-5)


def test_info_nce_gradient_has_no_conditional():
  """No `cond` in the loss or its gradient: XLA:CPU ran a conditional's
  collectives (jnp.diagonal's gather, split over the batch) out of order with
  the step's others, and the devices of one process waited at different ones
  until the run aborted (tests/test_multiprocess.py, 1 x 4)."""
  x = jnp.ones((4, 8))
  jaxpr = jax.make_jaxpr(
    jax.grad(lambda a, b: losses.symmetric_info_nce(a, b, 0.1), argnums=(0, 1))
  )(x, x)
  assert "cond" not in str(jaxpr)


def test_perfect_alignment_approaches_zero_loss():
  x = jnp.eye(8)
  assert float(losses.symmetric_info_nce(x, x, 0.01)) < 1e-6
  assert float(losses.symmetric_info_nce(x, x[::-1], 0.01)) > 10


def test_cosine_matrix_and_mse():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 4, 3))
  want = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (
    b / np.linalg.norm(b, axis=1, keepdims=True)
  ).T
  np.testing.assert_allclose(losses.cosine_similarity_matrix(a, b), want, rtol=1e-5)
  p, t = rng.normal(size=(2, 9))
  np.testing.assert_allclose(float(losses.mse(p, t)), np.mean((p - t) ** 2), rtol=1e-6)
