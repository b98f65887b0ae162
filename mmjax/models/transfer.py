"""Freezing submodules and initialising them from another run: config switches for the trainer.

  config.model.freeze = ("image_encoder",)             # top-level param subtrees that never update
  config.model.freeze_after = {"image_tokenizer": 600}  # subtrees that stop updating after N steps
  config.model.init_from = {"image_encoder": WORKDIR}  # copy that subtree from WORKDIR's newest params

  tx = freeze(tx, config.model.freeze)      # wrap the optimizer (before tx.init)
  tx = freeze_after(tx, config.model.freeze_after)
  params = init_from_workdirs(params, config.model.init_from, load_params)

This module sits on the models floor, so it does not import the trainer: `load_params(workdir)`
is passed in (e.g. `lambda wd: mmjax.train.workdir.load(wd).params`).

LoRA (mmjax.models.lora) reuses both: its adapters are trained through `freeze_by_labels`, and
`init_from` a base run (which has no adapters) keeps this run's freshly added adapter leaves.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

FROZEN, TRAINABLE = "frozen", "trainable"

# Leaves that mmjax.models.lora.add_adapters puts next to a Dense kernel. They are named here (the
# lower module) because copying weights from a run without adapters must leave them in place.
ADAPTER_LEAVES = ("lora_a", "lora_b", "lora_scale")


def _split(path: str) -> tuple[str, ...]:
  return tuple(p for p in path.replace("/", ".").split(".") if p)


def _matches(key: tuple, prefixes: Sequence[tuple[str, ...]]) -> bool:
  return any(key[: len(p)] == p for p in prefixes)


def _check_paths(params, paths: Sequence[str], what: str) -> list[tuple[str, ...]]:
  flat = traverse_util.flatten_dict(_plain(params))
  prefixes = [_split(p) for p in paths]
  for path, prefix in zip(paths, prefixes):
    if not any(k[: len(prefix)] == prefix for k in flat):
      top = sorted({k[0] for k in flat})
      raise KeyError(f"{what}: no parameters under {path!r}; top-level subtrees are {top}.")
  return prefixes


def _plain(tree):
  import flax.core

  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


def freeze_labels(params, frozen: Sequence[str]):
  """Pytree like `params` with FROZEN under any of the `frozen` paths ("image_encoder",
  "fusion/resampler_image") and TRAINABLE elsewhere."""
  prefixes = _check_paths(params, frozen, "model.freeze")
  flat = traverse_util.flatten_dict(_plain(params))
  return traverse_util.unflatten_dict({k: FROZEN if _matches(k, prefixes) else TRAINABLE for k in flat})


def freeze(tx: optax.GradientTransformation, frozen: Sequence[str]) -> optax.GradientTransformation:
  """`tx` for trainable parameters, zero updates (and no optimizer state) for frozen ones.

  Returns `tx` unchanged when nothing is frozen (old checkpoints keep their optimizer state layout).
  Frozen parameters also get no weight decay: their update is exactly 0.
  """
  frozen = tuple(frozen or ())
  if not frozen:
    return tx
  return freeze_by_labels(tx, lambda params: freeze_labels(params, frozen))


def freeze_by_labels(tx: optax.GradientTransformation, labels: Callable[[Any], Any]) -> optax.GradientTransformation:
  """`tx` where `labels(params)` says TRAINABLE, zero updates (and no optimizer state) where FROZEN.

  `labels` returns a pytree like params (a label may stand for a whole subtree or a boxed leaf);
  it is called on the params at init and on the updates at each step, so it must look at the
  tree's keys only.
  """
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)


class FreezeAfterState(NamedTuple):
  count: jax.Array  # updates made so far
  inner: Any


def freeze_after(tx: optax.GradientTransformation, steps: Mapping[str, int]) -> optax.GradientTransformation:
  """`tx` whose updates become exactly 0 under each path of `steps` ({"image_tokenizer": 600}) once
  that many updates were made: those parameters train for their first N steps, then stay fixed.

  For a part whose outputs another part learns from, such as an image tokenizer whose codes a decoder
  is trained to predict: once it stops, its outputs are stationary targets. The gradients still
  enter the inner transform (its global-norm clipping, its moments), only its output is zeroed.
  Returns `tx` unchanged when `steps` is empty (old checkpoints keep their optimizer state layout).
  """
  steps = {str(k): int(v) for k, v in dict(steps or {}).items()}
  if not steps:
    return tx
  prefixes = [(_split(path), n) for path, n in steps.items()]

  def stop_steps(tree):
    """The step from which each leaf stops (int32 max where none of `steps` covers it)."""

    def leaf(path, _):
      key = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
      return min([n for p, n in prefixes if _matches(key, (p,))], default=jnp.iinfo(jnp.int32).max)

    return jax.tree_util.tree_map_with_path(leaf, tree)

  def init(params):
    _check_paths(params, list(steps), "model.freeze_after")
    return FreezeAfterState(count=jnp.zeros([], jnp.int32), inner=tx.init(params))

  def update(updates, state, params=None):
    updates, inner = tx.update(updates, state.inner, params)
    updates = jax.tree.map(
      lambda stop, u: jnp.where(state.count >= stop, jnp.zeros_like(u), u), stop_steps(updates), updates
    )
    return updates, FreezeAfterState(count=optax.safe_increment(state.count), inner=inner)

  return optax.GradientTransformation(init, update)


def copy_subtrees(params, source, paths: Sequence[str], optional: Sequence[str] = ADAPTER_LEAVES):
  """`params` with the subtrees at `paths` replaced by `source`'s (shapes and dtypes must match).

  A leaf named in `optional` (by default the LoRA adapter leaves) that the source lacks keeps this
  run's value, so a LoRA run can start from a base run's weights.
  """
  prefixes = _check_paths(params, paths, "model.init_from")
  _check_paths(source, paths, "model.init_from (source)")
  dst = traverse_util.flatten_dict(_plain(params))
  src = traverse_util.flatten_dict(_plain(source))
  out = dict(dst)
  for k, v in dst.items():
    if _matches(k, prefixes):
      if k not in src:
        if k[-1] in optional:
          continue
        raise KeyError(f"model.init_from: the source has no parameter {'/'.join(k)}.")
      if jnp.shape(src[k]) != jnp.shape(v):
        raise ValueError(
          f"model.init_from: {'/'.join(k)} has shape {jnp.shape(src[k])} in the source and {jnp.shape(v)} here."
        )
      s = src[k]
      # Keep this run's placement (sharding) and dtype.
      out[k] = jax.device_put(jnp.asarray(s, v.dtype), v.sharding) if hasattr(v, "sharding") else s
  return traverse_util.unflatten_dict(out)


def init_from_workdirs(params, init_from: Mapping[str, str] | None, load_params: Callable[[str], Any]):
  """For each {path: workdir}, copies the subtree at `path` from load_params(workdir).

  Workdirs are loaded once each even when several paths come from the same run.
  """
  if not init_from:
    return params
  by_workdir: dict[str, list[str]] = {}
  for path, wd in dict(init_from).items():
    by_workdir.setdefault(str(wd), []).append(path)
  for wd, paths in by_workdir.items():
    params = copy_subtrees(params, load_params(wd), paths)
  return params
