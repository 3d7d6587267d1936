"""One train state for every trainer: a dict of step, params, batch_stats, opt_state.

A plain dict (not a dataclass) so that orbax saves it as the nested tree it
is; every trainer of the project (BMQA, the recogniser, the captioner) saves
and restores this layout, and checkpoints written before the shared library
existed have it too. `batch_stats` is `{}` for models without BatchNorm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

State = dict[str, Any]


def create(params, batch_stats, tx: optax.GradientTransformation) -> State:
  """A fresh state at step 0 (the optimiser state of `tx` for `params`)."""
  return dict(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=batch_stats or {},
    opt_state=tx.init(params),
  )


def variables(state_or_weights: dict) -> dict:
  """{'params', 'batch_stats'} for `model.apply`, without an empty collection."""
  out = {"params": state_or_weights["params"]}
  if state_or_weights.get("batch_stats"):
    out["batch_stats"] = state_or_weights["batch_stats"]
  return out


def all_finite(tree) -> jax.Array:
  """Whether every element of every floating array of `tree` is finite (one bool)."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree.leaves(tree)
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def apply_gradients(
  state: State, grads, tx: optax.GradientTransformation, batch_stats, metrics: dict, schedule=None
) -> tuple[State, dict]:
  """The state after one optimiser step, and `metrics` with `grad_norm`,
  `learning_rate` (when `schedule` is given) and `finite`: one on-device
  reduction over the loss, the weights and the optimiser state (a gradient
  of 1e20 leaves AdamW's weights finite but its second moment infinite, and
  that weight would never move again), which the step loop reads before
  every save, so that no non-finite state is ever saved
  (`bmqa_jax.train_lib.loop`)."""
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
  if schedule is not None:
    metrics["learning_rate"] = schedule(state["step"])
  metrics["finite"] = all_finite((metrics["loss"], params, batch_stats, opt_state))
  return dict(
    step=state["step"] + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  ), metrics


def accumulate_gradients(
  loss_fn, params, batch_stats, batch: dict, rng, steps: int, mesh
) -> tuple[Any, Any, dict]:
  """(gradients, batch_stats, metrics) of `loss_fn` over `steps` microbatches.

  `loss_fn(params, batch_stats, microbatch, rng) -> (loss, (batch_stats,
  metrics))`. Microbatch i holds rows i, i + steps, i + 2·steps, … of the
  global batch, so every device of the `data` axis takes part in each one. The
  gradient is the mean of the microbatch gradients, which equals the full-batch
  gradient for a per-sample mean loss such as the MSE of Eq. 14 (equal
  microbatch sizes). It does not for the InfoNCE of Eq. 11–13, whose negatives
  are then the other pairs of the same microbatch only (a smaller effective
  contrastive batch), nor for BatchNorm, whose training statistics are per
  microbatch (its running averages are updated once per microbatch). Metrics
  are averaged over the microbatches.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (_, (batch_stats, metrics)), grads = grad_fn(params, batch_stats, batch, rng)
    return grads, batch_stats, metrics

  def split(x):
    x = x.reshape((x.shape[0] // steps, steps) + x.shape[1:]).swapaxes(0, 1)
    return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    )

  def body(carry, xs):
    acc, bs = carry
    micro, i = xs
    (_, (bs, m)), g = grad_fn(params, bs, micro, jax.random.fold_in(rng, i))
    return (jax.tree.map(jnp.add, acc, g), bs), m

  zeros = jax.tree.map(jnp.zeros_like, params)
  (acc, batch_stats), ms = jax.lax.scan(
    body, (zeros, batch_stats), (jax.tree.map(split, batch), jnp.arange(steps))
  )
  grads = jax.tree.map(lambda g: g / steps, acc)
  return grads, batch_stats, jax.tree.map(lambda m: m.mean(0), ms)


def count_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
