"""Freezing submodules and initialising them from another run: config switches for the trainer.

  config.model.freeze = ("image_encoder",)             # top-level param subtrees that never update
  config.model.init_from = {"image_encoder": WORKDIR}  # copy that subtree from WORKDIR's newest params

  tx = freeze(tx, config.model.freeze)      # wrap the optimizer (before tx.init)
  params = init_from_workdirs(params, config.model.init_from, load_params)

This module sits on the models floor, so it does not import the trainer: `load_params(workdir)`
is passed in (e.g. `lambda wd: mmjax.train.workdir.load(wd).params`).

LoRA (mmjax.models.lora) reuses both: its adapters are trained through `freeze_by_labels`, and
`init_from` a base run (which has no adapters) keeps this run's freshly added adapter leaves.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

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
