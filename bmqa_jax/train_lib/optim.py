"""Learning-rate schedule and optimiser from a config block, and trainable labels.

One vocabulary for every trainer (a BMQA stage config `config.<stage>`, or the
recogniser's and captioner's `config.optimizer`; the defaults are
bmqa_jax/defaults.py's `stage` and `step_optimizer`, and a config.json written
before a field existed is completed there, `config_bases.complete`):

  optimizer       'adamw' (adam_b1, adam_b2, weight_decay) or 'sgd' (momentum)
  learning_rate   peak rate, reached after a linear warm-up from 0
  schedule        'constant', 'cosine' (to learning_rate · final_lr_fraction at
                  the last step) or 'piecewise' (× decay_factor at each of
                  decay_boundaries_epochs)
  grad_clip_norm  global-norm clipping before the update (0: none)

The warm-up length is given in steps by the caller (BMQA stages state it in
epochs, `warmup_epochs`; the recogniser and captioner in steps).
"""

from __future__ import annotations

import re

import jax
import optax

from bmqa_jax import pytree


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
  return max(1, num_samples // batch_size)


def make_schedule(
  ocfg, total_steps: int, warmup_steps: int, steps_per_epoch: int = 1
) -> optax.Schedule:
  """The schedule of `ocfg` over `total_steps` after `warmup_steps` of warm-up."""
  lr, warm = ocfg.learning_rate, int(warmup_steps)
  kind = ocfg.schedule
  if kind == "constant":
    main = optax.constant_schedule(lr)
  elif kind == "cosine":
    main = optax.cosine_decay_schedule(
      lr, max(1, total_steps - warm), alpha=float(ocfg.final_lr_fraction)
    )
  elif kind == "piecewise":
    main = optax.piecewise_constant_schedule(
      lr,
      {
        int(round(e * steps_per_epoch)) - warm: ocfg.decay_factor
        for e in ocfg.decay_boundaries_epochs
      },
    )
  else:
    raise ValueError(f"unknown schedule {kind!r}: 'constant', 'cosine' or 'piecewise'")
  if not warm:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def make_optimizer(ocfg, schedule, labels=None) -> optax.GradientTransformation:
  """Clipping then AdamW or SGD; with `labels` ('train'/'frozen' per parameter,
  `trainable_labels`) the frozen parameters get zero updates."""
  parts = []
  if ocfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(ocfg.grad_clip_norm))
  name = ocfg.optimizer
  if name == "adamw":
    parts.append(
      optax.adamw(schedule, b1=ocfg.adam_b1, b2=ocfg.adam_b2, weight_decay=ocfg.weight_decay)
    )
  elif name == "sgd":
    parts.append(optax.sgd(schedule, momentum=ocfg.momentum or None))
  else:
    raise ValueError(f"unknown optimizer {name!r}: 'adamw' or 'sgd'")
  tx = optax.chain(*parts)
  if labels is None:
    return tx
  return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def trainable_labels(params, regex: str):
  """'train'/'frozen' per parameter from a regex over 'module/sub/param' paths."""
  paths = pytree.param_paths(params)
  hits = {p for p in paths if re.fullmatch(regex, p)}
  if not hits:
    raise ValueError(
      f"trainable regex {regex!r} matches no parameter; examples: {sorted(paths)[:5]}"
    )
  flat = jax.tree_util.tree_flatten_with_path(params)
  labels = [
    "train" if "/".join(str(k.key) for k in path) in hits else "frozen" for path, _ in flat[0]
  ]
  return jax.tree_util.tree_unflatten(flat[1], labels)
