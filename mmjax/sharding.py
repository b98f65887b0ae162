"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

Parameters declare logical axes when created (`nn.with_logical_partitioning`), activations are
pinned with `constrain(x, ("act_batch", "act_len", "act_embed"))`. Which mesh axis a logical axis
lands on is decided only here (overridable by config: `config.sharding.rules`), so a new
parallelism strategy is a config change, not a code change.

Mesh axes:
  data      pure data parallelism (parameters replicated)
  fsdp      data parallelism with parameters and optimizer state sharded (ZeRO-3 / FSDP)
  tensor    tensor (model) parallelism over heads / mlp / vocab
  sequence  sequence parallelism for long inputs
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# (logical axis, mesh axis or axes or None). First match wins; unknown names are replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  # activations
  ("act_batch", ("data", "fsdp")),
  ("act_len", "sequence"),
  ("act_kv_len", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_head_dim", None),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
  # parameters
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("vocab", "tensor"),
  ("patch", None),
  ("palette", None),
  ("pixel_embed", None),
  ("pixel_mlp", None),
  ("media_embed", None),
  ("pos", None),
  ("channels", None),
  ("conv_window", None),
  ("conv_height", None),
  ("conv_width", None),
  ("conv_out", None),
  ("layers", None),
  ("norm", None),
)


def rules_from_config(overrides: Sequence | None = None):
  """DEFAULT_RULES with `overrides` (pairs, e.g. from config.sharding.rules) taking precedence."""
  overrides = tuple((str(k), _as_mesh_axes(v)) for k, v in (overrides or ()))
  known = {k for k, _ in DEFAULT_RULES}
  for name, value in overrides:
    if name not in known:
      raise ValueError(f"sharding rule for unknown logical axis {name!r}; known: {sorted(known)}.")
    for axis in value if isinstance(value, tuple) else (value,):
      if axis is not None and axis not in MESH_AXES:
        raise ValueError(f"sharding rule {name!r} -> {value!r}: mesh axes are {MESH_AXES}.")
  override_names = {k for k, _ in overrides}
  return overrides + tuple(r for r in DEFAULT_RULES if r[0] not in override_names)


def _as_mesh_axes(v):
  if isinstance(v, (list, tuple)):
    return tuple(v) if len(v) != 1 else v[0]
  return None if v in (None, "", "none", "None") else v


def make_mesh(
  shape: dict[str, int] | None = None,
  dcn_shape: dict[str, int] | None = None,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """Builds a Mesh with axes MESH_AXES.

  `shape` gives the in-slice (ICI) size of each axis; one axis may be -1 (takes what is left).
  `dcn_shape` gives the across-slice / across-node (DCN) size of each axis (default all 1); the
  device count is ICI x DCN. Axes left out have size 1.
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = [int((dcn_shape or {}).get(a, 1)) for a in MESH_AXES]
  for k in list(shape or {}) + list(dcn_shape or {}):
    if k not in MESH_AXES:
      raise ValueError(f"mesh axis {k!r} is not one of {MESH_AXES}.")
  ici = [int((shape or {"data": -1}).get(a, 1)) for a in MESH_AXES]
  n_ici = len(devices) // int(np.prod(dcn))
  if ici.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one axis may be -1.")
  if -1 in ici:
    rest = int(np.prod([s for s in ici if s != -1]))
    if n_ici % rest:
      raise ValueError(f"mesh shape {shape}: {n_ici} devices per slice are not divisible by {rest}.")
    ici[ici.index(-1)] = n_ici // rest
  total = int(np.prod(ici)) * int(np.prod(dcn))
  if total != len(devices):
    raise ValueError(
      f"mesh ICI {dict(zip(MESH_AXES, ici))} x DCN {dict(zip(MESH_AXES, dcn))} needs "
      f"{total} devices; {len(devices)} are available."
    )
  if int(np.prod(dcn)) > 1:
    from jax.experimental import mesh_utils

    arr = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
  else:
    try:
      from jax.experimental import mesh_utils

      arr = mesh_utils.create_device_mesh(ici, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
      arr = np.asarray(devices).reshape(ici)
  return Mesh(arr, MESH_AXES)


def logical_to_sharding(logical_tree, mesh: Mesh, rules):
  """Maps a pytree of logical PartitionSpecs (from nn.get_partition_spec) to NamedShardings."""
  specs = nn.logical_to_mesh(logical_tree, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Inputs are split on their leading (batch) axis over data x fsdp, replicated otherwise."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Pins an activation's sharding by logical names (a no-op outside a mesh + rules context)."""
  return nn.with_logical_constraint(x, logical_axes)
