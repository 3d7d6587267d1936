"""Small helpers over nested dicts of arrays (parameter trees)."""

from __future__ import annotations

import jax


def param_paths(tree) -> dict:
  """'module/sub/param' → leaf, for a nested dict of arrays."""
  return {
    "/".join(str(k.key) for k in path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def same_shapes(a, b) -> bool:
  """Whether two trees have the same structure and leaf shapes."""
  if jax.tree.structure(a) != jax.tree.structure(b):
    return False
  return all(
    tuple(x.shape) == tuple(y.shape) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
