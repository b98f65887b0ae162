"""Checkpoints: orbax CheckpointManager holding the train state, the input pipeline position and the
config, so a run restarted on the same workdir resumes by itself where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

from mmjax.train import config as train_config

# Config keys whose change makes a checkpoint unusable (shapes or meaning of the parameters).
# Compute dtype and attention implementation may change between runs: they do not touch parameters.
# config.model keys that do not change the parameters: a checkpoint may be restored under others.
_FREE_MODEL_KEYS = ("dtype", "attention_implementation", "remat", "init_from", "init_from_pretrained")


class CheckpointMismatch(ValueError):
  """The workdir's checkpoint was written by a config this run cannot continue."""


class Checkpointer:
  def __init__(self, workdir: str, keep: int, save_interval_steps: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, save_interval_steps=save_interval_steps, create=True, enable_async_checkpointing=True
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, config: ml_collections.ConfigDict, force: bool = False) -> bool:
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(_fields(state)),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
    )
    return self._manager.save(step, args=args, force=force)

  def restore(self, abstract_state, config: ml_collections.ConfigDict):
    """Restores the newest readable checkpoint. Returns (step, state, data_state) or None.

    A checkpoint that fails to read (partial write, corruption) is skipped with a warning and the
    previous one is tried.
    """
    unreadable = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        saved_config = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
      except Exception as e:  # noqa: BLE001 - any read failure means this step is unusable
        logging.warning("checkpoint %d in %s is unreadable (%s); trying an older one.", step, self.directory, e)
        unreadable.append(step)
        continue
      _check_compatible(saved_config, json.loads(config.to_json_best_effort()), self.directory)
      try:
        restored = self._manager.restore(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardRestore(_fields(abstract_state)), data=ocp.args.JsonRestore()),
        )
        state = type(abstract_state)(**restored["state"])
        _check_finite_state(state, step)
      except Exception as e:  # noqa: BLE001
        if isinstance(e, CheckpointMismatch):
          raise
        if "tree structures do not match" in str(e):
          # Readable, but not the state this code builds (another mmjax version's train state): keep it.
          raise CheckpointMismatch(
            f"checkpoint {step} in {self.directory} holds a train state of another structure than this "
            f"code builds ({str(e).splitlines()[0]}); it is left in place. Use the mmjax version that wrote "
            "it, or a new --workdir."
          ) from None
        logging.warning("checkpoint %d in %s is unreadable (%s); trying an older one.", step, self.directory, e)
        unreadable.append(step)
        continue
      self._set_aside(unreadable)
      return step, state, restored["data"]
    self._set_aside(unreadable)
    return None

  def _set_aside(self, steps) -> None:
    """Moves unreadable step directories to checkpoints_unreadable/ (kept for inspection), so the
    resumed run can write those steps again and a later restore does not trip on them."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        src = os.path.join(self.directory, str(step))
        if os.path.exists(src):
          dst = os.path.join(aside, f"{step}.{int(time.time())}")
          os.replace(src, dst)
          logging.warning("moved unreadable checkpoint %d to %s.", step, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("mmjax_checkpoint_set_aside")
    self._manager.reload()

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _fields(state) -> dict:
  """The train state as the dict a checkpoint holds: its fields, without those that are None (an
  optional part, like the EMA, is absent on disk rather than a None leaf: checkpoints written before
  such a field existed stay readable)."""
  return {f.name: getattr(state, f.name) for f in dataclasses.fields(state) if getattr(state, f.name) is not None}


def _check_finite_state(state, step: int) -> None:
  """A checkpoint with NaN/Inf parameters is as unusable as a corrupted one (checks this process's
  shards: the trainer never writes such a checkpoint, this guards against older or foreign ones)."""
  import numpy as np

  for leaf in jax.tree.leaves(state.params if hasattr(state, "params") else state):
    shards = [s.data for s in leaf.addressable_shards] if isinstance(leaf, jax.Array) else [leaf]
    for x in shards:
      x = np.asarray(x)
      if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise FloatingPointError(f"checkpoint {step} holds non-finite parameters.")


def _parameter_config(config: dict) -> dict:
  """config.model without its free keys, with the defaults of keys added since (train_config.upgrade);
  an empty block and None both mean "off" (older configs wrote audio: {} for no audio encoder)."""
  model = train_config.upgrade(config).model.to_dict()
  return {k: (v or None) if isinstance(v, dict) else v for k, v in model.items() if k not in _FREE_MODEL_KEYS}


def _check_compatible(saved: dict, current: dict, directory: str) -> None:
  a, b = _parameter_config(saved), _parameter_config(current)
  # An EMA in the state or not changes what the checkpoint holds (its value may change freely).
  has_ema = [float(train_config.upgrade(c).ema_decay) > 0 for c in (saved, current)]
  if has_ema[0] != has_ema[1]:
    raise CheckpointMismatch(
      f"the checkpoint in {directory} was trained {'with' if has_ema[0] else 'without'} parameter EMA "
      f"(config.ema_decay > 0) and this config is {'with' if has_ema[1] else 'without'}. Use a new --workdir, "
      "or set config.ema_decay as it was trained."
    )
  if a != b:
    diffs = _diff(a, b, "model")
    raise CheckpointMismatch(
      f"the checkpoint in {directory} was trained with a different `model` config "
      f"({'; '.join(diffs[:5])}). Use a new --workdir, or the config it was trained with."
    )


def _diff(a, b, prefix):
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f"{prefix}.{k}")
    return out
  return [] if a == b else [f"{prefix}: checkpoint {a!r} vs now {b!r}"]
