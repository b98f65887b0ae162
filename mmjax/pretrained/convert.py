"""Mappings between a checkpoint's tensors and mmjax parameters, run in both directions.

A family (mmjax.pretrained.<family>) describes each part of a checkpoint (an image tower, a text
tower, a decoder, ...) as a `Part`: the mmjax module it becomes, that module's fields, and a list
of `Entry`s. An entry maps checkpoint tensors to mmjax parameters by two functions, one each way,
so import and export are one description and a round trip is exact:

  Entry(mm=("block_0/mlp/wi/kernel",), hf=("h.0.mlp.c_fc.weight",), to_mm=..., to_hf=...)

The builders below cover the common cases (a torch Linear, a norm, a fused projection).
`load_part` checks every tensor's presence, shape and dtype against the mapping before reading any
data, and builds each parameter directly in its target sharding (jax.make_array_from_callback:
each device receives only its slice, read from the memory-mapped file), so nothing is half-loaded
and no device ever holds a full copy of a sharded weight.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from mmjax.pretrained.checkpoint import Reader

Arrays = Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
  mm: tuple[str, ...]  # mmjax parameter paths, "/"-joined, relative to the part's module
  hf: tuple[str, ...]  # checkpoint tensor names
  to_mm: Callable[[Arrays], list[np.ndarray]]
  to_hf: Callable[[Arrays], list[np.ndarray]]
  # The mmjax shapes the checkpoint's shapes imply, checked before any data is read
  # (None: the function of the checkpoint shapes is not known in advance).
  mm_shapes: Callable[[Sequence[tuple]], list[tuple]] | None = None


@dataclasses.dataclass(frozen=True)
class Part:
  """One mmjax module's worth of a checkpoint.

  module: the registry name of the module class ("vit", "text", "decoder", "audio", or a model kind)
  fields: its constructor fields (what a config block holds: width, depth, style, ...)
  entries: the tensor mapping, mm paths relative to the module's own parameters
  data: the config.data values the module's inputs must have
  """

  module: str
  fields: dict
  entries: tuple[Entry, ...]
  # config.data values the part needs, e.g. {"image_size": 224} for a tower with a learned position
  # per patch (mmjax.pretrained.compose sets them).
  data: dict = dataclasses.field(default_factory=dict)


# -- builders -------------------------------------------------------------------------------------


def copy(mm: str, hf: str) -> Entry:
  return Entry((mm,), (hf,), lambda t: [np.asarray(t[0])], lambda p: [np.asarray(p[0])], lambda s: [s[0]])


def linear(
  mm: str, hf: str, in_shape: tuple = (), out_shape: tuple = (), bias: bool = True, stored: str = "out_in"
) -> list[Entry]:
  """A linear layer `hf` as a layers.Dense `mm` (kernel [*in_shape, *out_shape]: e.g. out_shape
  (heads, head_dim) for a query projection, in_shape (heads, head_dim) for the output projection;
  empty shapes keep the checkpoint's dims). stored: "out_in" for a torch Linear's weight [out, in],
  "in_out" for GPT-2's Conv1D, which stores it in Dense's order."""
  flip = stored == "out_in"

  def shape(s):
    inp, out = s[::-1] if flip else s
    return tuple(in_shape or (inp,)) + tuple(out_shape or (out,))

  def to_mm(t):
    w = np.asarray(t[0])
    return [(w.T if flip else w).reshape(shape(w.shape))]

  def to_hf(p):
    k = np.asarray(p[0])
    k = k.reshape(int(np.prod(k.shape[: len(in_shape) or 1])), -1)
    return [k.T if flip else k]

  entries = [Entry((f"{mm}/kernel",), (f"{hf}.weight",), to_mm, to_hf, lambda s: [shape(s[0])])]
  if bias:
    entries.append(
      Entry(
        (f"{mm}/bias",),
        (f"{hf}.bias",),
        lambda t: [np.asarray(t[0]).reshape(tuple(out_shape) or np.shape(t[0]))],
        lambda p: [np.asarray(p[0]).reshape(-1)],
        lambda s: [tuple(out_shape) or s[0]],
      )
    )
  return entries


def norm(
  mm: str, hf: str, kind: str = "layernorm", bias_name: str = "bias", weight_name: str = "weight"
) -> list[Entry]:
  """A norm `hf` (weight [, bias]) as a layers.Norm `mm` of the given kind."""
  if kind == "layernorm":
    return [copy(f"{mm}/LayerNorm_0/scale", f"{hf}.{weight_name}"), copy(f"{mm}/LayerNorm_0/bias", f"{hf}.{bias_name}")]
  return [copy(f"{mm}/scale", f"{hf}.{weight_name}")]


def split(mm: Sequence[str], hf: str, part_shape: tuple, shapes: Sequence[tuple] | None = None) -> Entry:
  """One checkpoint tensor fused along its last axis (e.g. GPT-2's c_attn: q, k, v side by side)
  as len(mm) mmjax parameters of `part_shape` each in the checkpoint's layout, reshaped to
  shapes[i] when given ([D, 3D] -> three [D, heads, head_dim] kernels with part_shape (D, D))."""

  def to_mm(t):
    parts = np.split(np.asarray(t[0]), len(mm), axis=-1)
    return [p.reshape(shapes[i]) if shapes else p for i, p in enumerate(parts)]

  def to_hf(p):
    return [np.concatenate([np.asarray(x).reshape(part_shape) for x in p], axis=-1)]

  def mm_shapes(s):
    return [tuple(x) for x in shapes] if shapes else [tuple(part_shape)] * len(mm)

  return Entry(tuple(mm), (hf,), to_mm, to_hf, mm_shapes)


def conv(mm: str, hf: str, bias: bool = True) -> list[Entry]:
  """A torch ConvNd `hf` (weight [out, in, *kernel]) as a kernel [*kernel, in, out] (flax nn.Conv's
  layout, and audio.Conv1D's Dense over (window, channels))."""
  to = lambda t: [np.moveaxis(np.asarray(t[0]), (0, 1), (-1, -2))]
  back = lambda p: [np.moveaxis(np.asarray(p[0]), (-1, -2), (0, 1))]
  shapes = lambda s: [tuple(s[0][2:]) + (s[0][1], s[0][0])]
  entries = [Entry((f"{mm}/kernel",), (f"{hf}.weight",), to, back, shapes)]
  return entries + ([copy(f"{mm}/bias", f"{hf}.bias")] if bias else [])


def constant(mm: str, shape: tuple, value: float = 0.0) -> Entry:
  """An mmjax parameter the checkpoint has no tensor for, loaded as `value` and dropped on export:
  e.g. the key bias of Whisper's attention (mmjax's attention_bias puts a bias on every projection;
  a key bias adds q.b to every logit of a query, which softmax ignores, so it keeps its gradient 0)."""
  return Entry((mm,), (), lambda t: [np.full(shape, value, np.float32)], lambda p: [], lambda s: [tuple(shape)])


# The roles of a layers.TransformerBlock's parameters, by their mmjax paths within the block.
BLOCK_ROLES = {
  "norm_self": "norm_self",
  "query": "self_attention/query",
  "key": "self_attention/key",
  "value": "self_attention/value",
  "out": "self_attention/out",
  "norm_mlp": "norm_mlp",
  "wi": "mlp/wi",
  "wi_linear": "mlp/wi_linear",
  "wo": "mlp/wo",
}


def block(
  mm: str,
  hf: str,
  names: dict,
  heads: int,
  head_dim: int,
  kv_heads: int | None = None,
  norm_kind: str = "layernorm",
  attention_bias: bool = True,
  mlp_bias: bool = True,
) -> list[Entry]:
  """A layers.TransformerBlock `mm` from a checkpoint layer `hf`, given each role's tensor prefix
  within the layer (`names`: BLOCK_ROLES key -> e.g. "self_attn.q_proj"; "wi_linear" only for a
  gated MLP). Torch Linear projections, norms of `norm_kind`."""
  kv = kv_heads or heads
  shapes = {"query": dict(out_shape=(heads, head_dim)), "key": dict(out_shape=(kv, head_dim))}
  shapes |= {"value": dict(out_shape=(kv, head_dim)), "out": dict(in_shape=(heads, head_dim))}
  e = []
  for role, theirs in names.items():
    ours, theirs = f"{mm}/{BLOCK_ROLES[role]}", f"{hf}.{theirs}"
    if role.startswith("norm"):
      e += norm(ours, theirs, norm_kind)
    else:
      bias = attention_bias if role in shapes else mlp_bias
      e += linear(ours, theirs, bias=bias, **shapes.get(role, {}))
  return e


# -- running a mapping ----------------------------------------------------------------------------


def check(part: Part, reader: Reader, where: str) -> None:
  """Every tensor the mapping reads exists with a representable dtype, and implies the mmjax shapes
  it should; raises naming the tensor (and both shapes) before any data is read."""
  for e in part.entries:
    for name in e.hf:
      if name not in reader:
        raise KeyError(
          f"{where}: the checkpoint has no tensor {name!r}, which {part.module} parameter {e.mm[0]} needs."
        )
      if not np.issubdtype(reader.info(name).dtype, np.floating) and reader.info(name).dtype.name != "bfloat16":
        raise ValueError(f"{where}: tensor {name!r} has dtype {reader.info(name).dtype}; parameters must be floats.")


def load_part(
  part: Part,
  reader: Reader,
  where: str,
  target: Mapping[str, Any] | None = None,
  dtype=np.float32,
  fresh: Sequence[str] = (),
) -> dict:
  """The part's parameters as a nested dict.

  target: {mm path: jax.ShapeDtypeStruct with .sharding} of the module's parameters (from the
  model's abstract state): every parameter is checked against it (a missing or mismatched one is an
  error naming both shapes) and created directly in its sharding. A target with more leading rows
  than the checkpoint along axis 0 (a vocabulary grown by location tokens) keeps the checkpoint's
  rows first; the rest are the target's own values (the model's init), so target leaves given as
  arrays (not abstract shapes) also allow that. A target parameter that the checkpoint lacks is an
  error, unless its path has a component in `fresh` (layers the composed model adds to a pretrained
  tower, e.g. "cross_attention"): it keeps the target's value.
  Without target: host numpy arrays in `dtype`.
  """
  check(part, reader, where)
  flat: dict[str, Any] = {}
  for e in part.entries:
    shapes = [reader.info(n).shape for n in e.hf]
    if target is not None and e.mm_shapes is not None:
      for path, shape in zip(e.mm, e.mm_shapes(shapes)):
        _check_shape(path, shape, target, e, where)
    # One host copy of this entry's tensors at a time: devices slice it in the callback.
    values = e.to_mm([reader.get(n) for n in e.hf])
    for path, value in zip(e.mm, values):
      if target is None:
        flat[path] = np.asarray(value, dtype)
        continue
      _check_shape(path, value.shape, target, e, where)
      flat[path] = _place(value, target[path])
  if target is not None:
    missing = sorted(set(target) - set(flat))
    added = [p for p in missing if any(c in fresh for c in p.split("/"))]
    flat.update({p: target[p] for p in added})
    missing = sorted(set(missing) - set(added))
    if missing:
      raise KeyError(f"{where}: the checkpoint mapping gives no value for {missing[:5]} ({len(missing)} parameters).")
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def _check_shape(path, shape, target, e: Entry, where):
  if path not in target:
    raise KeyError(f"{where}: the model has no parameter {path!r} (checkpoint tensors {list(e.hf)}).")
  want = tuple(target[path].shape)
  shape = tuple(shape)
  grown = (
    len(want) == len(shape) and want[1:] == shape[1:] and want[0] >= shape[0] and isinstance(target[path], jax.Array)
  )
  if want != shape and not grown:
    raise ValueError(f"{where}: {list(e.hf)} gives {path} the shape {shape}; the model's is {want}.")


def _place(value: np.ndarray, target) -> jax.Array:
  """`value` as a jax array with target's dtype and sharding; rows past value's (a grown vocabulary)
  are the target's own."""
  value = np.asarray(value)
  if isinstance(target, jax.Array) and target.shape[0] > value.shape[0]:
    base = np.array(jax.device_get(target), dtype=np.float32)
    base[: value.shape[0]] = value
    value = base
  sharding = getattr(target, "sharding", None)
  dtype = target.dtype
  if sharding is None:
    return jax.numpy.asarray(value, dtype)
  return jax.make_array_from_callback(value.shape, sharding, lambda idx: np.asarray(value[idx], dtype))


def export_part(
  part: Part, params: Mapping, dtypes: Mapping[str, np.dtype] | None = None, rows: Mapping | None = None
) -> dict:
  """{checkpoint tensor name: array} of `params` (the module's parameter tree), each in dtypes[name]
  (the checkpoint's own dtype for a round trip; float32 by default). rows[name] cuts a grown axis 0
  back to the checkpoint's rows."""
  flat = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in traverse_util.flatten_dict(dict(params)).items()}
  out = {}
  for e in part.entries:
    missing = [p for p in e.mm if p not in flat]
    if missing:
      raise KeyError(f"export: the parameters have no {missing[0]!r}.")
    for name, value in zip(e.hf, e.to_hf([flat[p] for p in e.mm])):
      if rows and name in rows:
        value = value[: rows[name]]
      out[name] = np.asarray(value, (dtypes or {}).get(name, np.float32), order="C")
  return out
