"""LoRA (Hu et al. 2021, "Low-Rank Adaptation of Large Language Models") as a transform of the
parameter tree: no module changes, `mmjax.layers.Dense` applies an adapter when its params hold one.

  params = add_adapters(params, ("query", "value"), rank=8, alpha=16, rng=key)  # after model.init
  tx = train_adapters_only(tx)          # only lora_a / lora_b get updates
  ...
  plain = merge(params)                 # kernel += scale * A B, adapter leaves removed

Next to a Dense kernel of shape in_shape + features, `add_adapters` puts
  lora_a      in_shape + (r,)   logical axes: the kernel's input axes + ("lora_rank",)
  lora_b      (r,) + features   logical axes: ("lora_rank",) + the kernel's output axes
  lora_scale  ()                alpha / r
and Dense computes x W (+ b) + lora_scale (x A) B. A scanned stack of layers (nn.scan, params
stacked on a leading "layers" axis) gets stacked adapters: every leaf, lora_scale included, keeps
that leading axis so that nn.scan can slice it like the kernel.

Targets: patterns on the '/'-joined path of the Dense module (the kernel's parent, e.g.
"decoder/block_0/attn/query"), matched segment by segment:
  - `*`, `?`, `[abc]` are shell wildcards within one segment (fnmatch, case-sensitive);
  - `**` matches any number of segments, none included;
  - a pattern without '/' matches the module's own name wherever it is ("query", "wi*");
  - a pattern with '/' matches the whole path from the root ("decoder/**/query": every Dense named
    query under the top-level decoder; "decoder/**": every Dense of the decoder).
Only the kernels of `mmjax.layers.Dense` should be targeted: another module with a `kernel` (nn.Conv)
would carry the leaves without applying them.

Initialisation as in the LoRA reference code (and peft): A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
fan_in = prod(in_shape) (Kaiming-uniform with a = sqrt(5), PyTorch's nn.Linear default), so x A has
the scale of one input feature whatever the width; B = 0, so the adapted model starts equal to the
base one. Each kernel's A comes from `rng` folded with a hash of its path: adding a target does
not change the other targets' A.
"""

from __future__ import annotations

import fnmatch
import zlib
from typing import Any, Mapping, Sequence

import flax.core
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from mmjax.models import transfer

ADAPTER_LEAVES = transfer.ADAPTER_LEAVES  # ("lora_a", "lora_b", "lora_scale")
TRAINED_LEAVES = ("lora_a", "lora_b")  # lora_scale is a constant: never trained
RANK_AXIS = "lora_rank"  # not in mmjax.sharding's rules: replicated (r is small)
# Logical names that nn.scan puts in front of stacked layer params (mmjax.layers.ScannedBlocks).
STACK_AXES = ("layers",)
# Without a bias the input/output split of a kernel is read from its logical names: the output is
# the last axis, or the last two when they form one of these pairs (attention's q/k/v projections).
OUTPUT_AXIS_PAIRS = (("heads", "head_dim"), ("kv_heads", "head_dim"))


def matches(pattern: str, path: str) -> bool:
  """Whether a target pattern (syntax in the module docstring) matches a '/'-joined module path."""
  segments = [s for s in path.split("/") if s]
  if "/" not in pattern:
    return bool(segments) and fnmatch.fnmatchcase(segments[-1], pattern)
  return _match([p for p in pattern.split("/") if p], segments)


def _match(pattern: list[str], segments: list[str]) -> bool:
  if not pattern:
    return not segments
  if pattern[0] == "**":
    return any(_match(pattern[1:], segments[i:]) for i in range(len(segments) + 1))
  return bool(segments) and fnmatch.fnmatchcase(segments[0], pattern[0]) and _match(pattern[1:], segments[1:])


def add_adapters(
  params,
  targets: str | Sequence[str],
  rank: int,
  alpha: float,
  rng: jax.Array,
  *,
  in_ndims: Mapping[str, int] | None = None,
):
  """`params` with LoRA leaves next to every Dense kernel whose module path matches a target.

  Works on boxed params (nn.LogicallyPartitioned leaves, as model.init returns them under
  nn.with_logical_partitioning): the new leaves are boxed with the logical names in the module
  docstring, so nn.get_partition_spec shards A's input axes like the kernel's. Works on plain
  arrays too, and under jax.eval_shape / jit.

  How many leading kernel dims are the input: with a bias, kernel.ndim - bias.ndim; without one,
  1 for a 2-D kernel, else read from the logical names (see OUTPUT_AXIS_PAIRS). Plain arrays give
  no names: a kernel of 3+ dims without a bias needs `in_ndims` ({pattern: n}, first match wins),
  and plain arrays are taken as unstacked (a scanned model's adapters need its boxed params).
  """
  if isinstance(targets, str):
    targets = (targets,)
  targets = tuple(targets)
  if not targets:
    raise ValueError("lora: no targets given; name the Dense modules to adapt, e.g. ('query', 'value').")
  if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
    raise ValueError(f"lora: rank must be an integer >= 1, got {rank!r}.")
  rank = int(rank)
  scale = float(alpha) / rank
  frozen_in = isinstance(params, flax.core.FrozenDict)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params), keep_empty_nodes=True)
  modules = sorted(k[:-1] for k, v in flat.items() if k[-1] == "kernel" and not _is_empty(v))
  chosen = []
  for pattern in targets:
    hit = [m for m in modules if matches(pattern, "/".join(m))]
    if not hit:
      names = sorted({m[-1] for m in modules if m})
      raise ValueError(f"lora target {pattern!r} matches no Dense kernel; the kernels' modules are named {names}.")
    chosen += [m for m in hit if m not in chosen]
  for module in chosen:
    path = "/".join(module)
    if any(module + (leaf,) in flat for leaf in ADAPTER_LEAVES):
      raise ValueError(f"lora: {path} already has adapters (merge() them first).")
    hint = next((n for p, n in dict(in_ndims or {}).items() if matches(p, path)), None)
    kernel = flat[module + ("kernel",)]
    n_lead, n_in = _layout(path, kernel, flat.get(module + ("bias",)), hint)
    key = jax.random.fold_in(rng, zlib.crc32(path.encode()) & 0x7FFFFFFF)
    flat.update({module + (name,): leaf for name, leaf in _adapter(kernel, n_lead, n_in, rank, scale, key).items()})
  out = traverse_util.unflatten_dict(flat)
  return flax.core.freeze(out) if frozen_in else out


def _is_empty(v) -> bool:
  return v is traverse_util.empty_node


def _value(leaf):
  if isinstance(leaf, nn.Partitioned):
    return leaf.value
  if isinstance(leaf, nn.meta.AxisMetadata):
    raise TypeError(f"lora: unsupported boxed parameter {type(leaf).__name__}; use nn.with_logical_partitioning.")
  return leaf


def _names(leaf):
  return tuple(leaf.names) if isinstance(leaf, nn.Partitioned) else None


def _layout(path: str, kernel, bias, hint: int | None) -> tuple[int, int]:
  """(number of leading stacked dims, number of input dims) of a Dense kernel."""
  shape, names = tuple(np.shape(_value(kernel))), _names(kernel)
  n_lead = 0
  while names is not None and n_lead < len(names) and names[n_lead] in STACK_AXES:
    n_lead += 1
  nd = len(shape) - n_lead
  if hint is not None:
    n_in = int(hint)
  elif bias is not None:
    n_in = len(shape) - np.ndim(_value(bias))
  elif nd == 2:
    n_in = 1
  elif names is not None:
    n_in = nd - (2 if names[-2:] in OUTPUT_AXIS_PAIRS else 1)
  else:
    raise ValueError(
      f"lora: cannot tell the input dims of {path}'s kernel {shape} (plain arrays, no bias); "
      f"pass in_ndims={{{path!r}: n}} or the boxed params from model.init."
    )
  if not 1 <= n_in < nd:
    raise ValueError(f"lora: {path}'s kernel {shape} cannot have {n_in} input dims.")
  if bias is not None:
    bias_shape = tuple(np.shape(_value(bias)))
    if shape[:n_lead] + shape[n_lead + n_in :] != bias_shape:
      raise ValueError(
        f"lora: {path}'s kernel {shape} and bias {bias_shape} do not fit a Dense with {n_in} input dims"
        + ("" if names is not None else " (a scanned layer? pass the boxed params from model.init)")
        + "."
      )
  return n_lead, n_in


def _adapter(kernel, n_lead: int, n_in: int, rank: int, scale: float, key) -> dict[str, Any]:
  value, names = _value(kernel), _names(kernel)
  shape, dtype = tuple(value.shape), value.dtype
  lead, in_shape, out_shape = shape[:n_lead], shape[n_lead : n_lead + n_in], shape[n_lead + n_in :]
  bound = 1.0 / np.sqrt(np.prod(in_shape))
  leaves = {
    "lora_a": jax.random.uniform(key, lead + in_shape + (rank,), dtype, -bound, bound),
    "lora_b": jnp.zeros(lead + (rank,) + out_shape, dtype),
    "lora_scale": jnp.full(lead, scale, dtype),
  }
  if names is None:
    return leaves
  # A plain nn.Partitioned names mesh axes, where the rank axis has none (replicated).
  rank_name = RANK_AXIS if isinstance(kernel, nn.LogicallyPartitioned) else None
  lead_n, in_n, out_n = names[:n_lead], names[n_lead : n_lead + n_in], names[n_lead + n_in :]
  axes = {"lora_a": lead_n + in_n + (rank_name,), "lora_b": lead_n + (rank_name,) + out_n, "lora_scale": lead_n}
  # replace() keeps the kernel's mesh and rules, so the adapters are placed by the same table.
  return {k: kernel.replace(value=v, names=axes[k]) for k, v in leaves.items()}


def adapted_modules(params) -> list[str]:
  """The '/'-joined paths of the modules that hold adapters."""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  return sorted("/".join(k[:-1]) for k in flat if k[-1] == "lora_a")


def trainable_labels(params, train: Sequence[str] = ()):
  """Pytree like `params`: transfer.TRAINABLE at lora_a / lora_b and under the subtrees that the
  patterns `train` match (the target syntax, on any ancestor's path: "fusion", "cross_attention",
  "decoder/*/cross_gate": new layers a composed model trains in full, peft's modules_to_save),
  transfer.FROZEN elsewhere (base weights, biases, norms, embeddings and lora_scale). A boxed leaf
  gets one label."""
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  if not any(k[-1] in TRAINED_LEAVES for k in flat):
    raise ValueError("lora: the params hold no adapters (add_adapters first); training them would change nothing.")
  under = lambda pattern, k: any(matches(pattern, "/".join(k[:i])) for i in range(1, len(k) + 1))
  for pattern in train:
    if not any(under(pattern, k) for k in flat):
      raise ValueError(
        f"config.model.lora.train: {pattern!r} matches no parameters; top-level: {sorted({k[0] for k in flat})}."
      )
  trained = lambda k: k[-1] in TRAINED_LEAVES or (k[-1] != "lora_scale" and any(under(p, k) for p in train))
  labels = {k: transfer.TRAINABLE if trained(k) else transfer.FROZEN for k in flat}
  return traverse_util.unflatten_dict(labels)


def train_adapters_only(tx: optax.GradientTransformation, train: Sequence[str] = ()) -> optax.GradientTransformation:
  """`tx` on the adapters (and the subtrees `train`); zero updates and no optimizer state elsewhere."""
  return transfer.freeze_by_labels(tx, lambda params: trainable_labels(params, train))


def merge(params):
  """`params` with kernel += lora_scale * A B (reshaped to the kernel's shape) and the adapter
  leaves removed: the plain model then computes what the adapted one did. Boxed or plain."""
  frozen_in = isinstance(params, flax.core.FrozenDict)
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params), keep_empty_nodes=True)
  for module in sorted({k[:-1] for k in flat if k[-1] in ADAPTER_LEAVES}):
    path = "/".join(module)
    missing = [n for n in ADAPTER_LEAVES + ("kernel",) if module + (n,) not in flat]
    if missing:
      raise ValueError(f"lora: {path} has adapter leaves but no {missing}.")
    a, b, s = (_value(flat.pop(module + (n,))) for n in ADAPTER_LEAVES)
    kernel = flat[module + ("kernel",)]
    w = _value(kernel)
    lead, r = tuple(s.shape), a.shape[-1]
    dtype = jnp.promote_types(w.dtype, jnp.float32)
    a2 = a.astype(dtype).reshape(lead + (-1, r))
    b2 = b.astype(dtype).reshape(lead + (r, -1))
    delta = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST) * s.astype(dtype)[..., None, None]
    merged = (w.astype(dtype) + delta.reshape(w.shape)).astype(w.dtype)
    flat[module + ("kernel",)] = kernel.replace_boxed(merged) if isinstance(kernel, nn.Partitioned) else merged
  out = traverse_util.unflatten_dict(flat)
  return flax.core.freeze(out) if frozen_in else out


def add_adapters_from_config(params, lora: Mapping[str, Any] | None, rng: jax.Array):
  """add_adapters with config.model.lora = {targets: (...), rank: r, alpha: a, train: (...)} (alpha
  defaults to r, a scale of 1; `train` is for train_adapters_only); params unchanged when `lora` is
  None or empty (LoRA off)."""
  if not lora:
    return params
  lora = dict(lora)
  unknown = sorted(set(lora) - {"targets", "rank", "alpha", "train"})
  missing = sorted({"targets", "rank"} - set(lora))
  if unknown or missing:
    raise ValueError(
      f"config.model.lora: unknown keys {unknown}, missing keys {missing}; it takes targets, rank, alpha and train."
    )
  rank = lora["rank"]
  return add_adapters(params, lora["targets"], rank, lora.get("alpha", rank), rng)
