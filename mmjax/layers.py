"""Transformer building blocks shared by every encoder, fusion module and decoder.

Every parameter is created with logical axis names and every activation that crosses a layer
boundary is pinned with logical names (mmjax.sharding holds the one table that maps them to mesh
axes). Every attention goes through `mmjax.attention.attention`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.attention import MaskSpec, attention
from mmjax.sharding import constrain

Dtype = Any
default_kernel_init = nn.initializers.xavier_uniform()


def param_with_axes(init: Callable, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, axes)


def constrain_tokens(x: jax.Array) -> jax.Array:
  """[B, S, D] activations: batch on data x fsdp, length on sequence."""
  return constrain(x, ("act_batch", "act_len", "act_embed"))


class Dense(nn.Module):
  """Linear map over the last `len(in_axes)` dims with logical axes on the kernel.

  features may be an int or a tuple (e.g. (heads, head_dim)); in_axes/out_axes name the kernel's
  input and output dims.

  LoRA: when the params hold `lora_a` [*in, r], `lora_b` [r, *features] and `lora_scale` next to
  the kernel (inserted after init by mmjax.models.lora.add_adapters), the layer adds
  lora_scale * (x A) B. The module never creates them itself, so a model's structure and init are
  the same with or without adapters, and which layers are adapted is a config choice.
  """

  features: int | tuple[int, ...]
  in_axes: tuple[str, ...]
  out_axes: tuple[str, ...]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  kernel_init: Callable = default_kernel_init

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    n_in = len(self.in_axes)
    in_shape = x.shape[-n_in:]
    kernel = self.param(
      "kernel",
      param_with_axes(self._init_flat(in_shape, features), self.in_axes + self.out_axes),
      tuple(in_shape) + features,
      jnp.float32,
    )
    contract = tuple(range(x.ndim - n_in, x.ndim))
    dims = ((contract, tuple(range(n_in))), ((), ()))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype), dims)
    if self.has_variable("params", "lora_a"):
      # unbox: params straight from init (nn.LogicallyPartitioned) are applied too.
      a, b, scale = (nn.meta.unbox(self.get_variable("params", n)) for n in ("lora_a", "lora_b", "lora_scale"))
      low = jax.lax.dot_general(x.astype(self.dtype), a.astype(self.dtype), dims)
      low = jnp.tensordot(low, b.astype(self.dtype), axes=1)
      y = y + scale.astype(self.dtype) * low
    if self.use_bias:
      bias = self.param("bias", param_with_axes(nn.initializers.zeros, self.out_axes), features, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y

  def _init_flat(self, in_shape, features):
    """Initialises as a 2-D (fan_in, fan_out) matrix so fan computations see the true sizes."""

    def init(key, shape, dtype):
      flat = self.kernel_init(key, (int(np.prod(in_shape)), int(np.prod(features))), dtype)
      return flat.reshape(shape)

    return init


NORMS = ("layernorm", "rmsnorm", "rmsnorm_offset")


class Norm(nn.Module):
  """Normalisation over the last dim: "layernorm" (with bias), "rmsnorm" (x / rms * w, Llama) or
  "rmsnorm_offset" (x / rms * (1 + w) with w starting at 0, Gemma). eps: 1e-6 for mmjax's own
  models; pretrained families set theirs (CLIP 1e-5, BERT / ViT 1e-12)."""

  dtype: Dtype = jnp.float32
  kind: str = "layernorm"
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x):
    if self.kind == "layernorm":
      return nn.LayerNorm(
        epsilon=self.eps,
        dtype=self.dtype,
        scale_init=param_with_axes(nn.initializers.ones, ("norm",)),
        bias_init=param_with_axes(nn.initializers.zeros, ("norm",)),
      )(x)
    if self.kind not in NORMS:
      raise ValueError(f"norm={self.kind!r}: use one of {NORMS}.")
    offset = self.kind == "rmsnorm_offset"
    init = nn.initializers.zeros if offset else nn.initializers.ones
    scale = self.param("scale", param_with_axes(init, ("norm",)), (x.shape[-1],), jnp.float32)
    h = x.astype(jnp.float32)
    h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
    return (h * (1.0 + scale if offset else scale)).astype(self.dtype)


# name -> (activation, gated). Gated variants multiply the activated projection `wi` by a second
# linear projection `wi_linear` (GeGLU as in Gemma, SwiGLU as in Llama); "gelu" is the tanh
# approximation (GPT-2's gelu_new), "gelu_exact" the erf form (BERT, ViT), "quick_gelu" CLIP's
# x * sigmoid(1.702 x).
MLP_ACTIVATIONS = {
  "gelu": (lambda x: nn.gelu(x, approximate=True), False),
  "gelu_exact": (lambda x: nn.gelu(x, approximate=False), False),
  "quick_gelu": (lambda x: x * jax.nn.sigmoid(1.702 * x), False),
  "relu": (nn.relu, False),
  "silu": (nn.silu, False),
  "geglu": (lambda x: nn.gelu(x, approximate=True), True),
  "swiglu": (nn.silu, True),
}


class MLP(nn.Module):
  """Two-layer MLP. A gated activation ("geglu", Shazeer 2020, as in Gemma) multiplies the activated
  projection by a second linear one: the product of two linear functions of the input can express
  an interaction of two features (e.g. "which side was asked" x "which side the object is on")
  with a first-order gradient from the start, where a plain GELU MLP has to find it through its
  curvature."""

  hidden: int
  dtype: Dtype = jnp.float32
  activation: str = "gelu"  # a key of MLP_ACTIVATIONS
  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if self.activation not in MLP_ACTIVATIONS:
      raise ValueError(
        f"mlp_activation={self.activation!r} (config.model.<tower>.mlp_activation): "
        f"use one of {tuple(MLP_ACTIVATIONS)}."
      )
    act, gated = MLP_ACTIVATIONS[self.activation]
    dense = lambda n, i, o, name: Dense(n, i, o, use_bias=self.use_bias, dtype=self.dtype, name=name)
    h = act(dense(self.hidden, ("embed",), ("mlp",), "wi")(x))
    if gated:
      h = h * dense(self.hidden, ("embed",), ("mlp",), "wi_linear")(x)
    h = constrain(h, ("act_batch", "act_len", "act_mlp"))
    return dense(d, ("mlp",), ("embed",), "wo")(h)


# TransformerBlock fields that pretrained families set differently from mmjax's own models; an
# encoder or decoder takes them as one `style` mapping (config.model.<tower>.style).
STYLE_FIELDS = ("norm", "norm_eps", "post_norm", "attention_bias", "mlp_bias", "rope_theta")


def block_style(style, where: str) -> dict:
  """The TransformerBlock fields of a `style` mapping (None: mmjax's defaults), checked by name."""
  style = dict(style or {})
  unknown = sorted(set(style) - set(STYLE_FIELDS))
  if unknown:
    raise ValueError(f"{where}.style has unknown keys {unknown}; the style keys are {STYLE_FIELDS}.")
  return style


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of x [B, S, H, D] at integer positions [B, S] (or [S]), in the
  "rotate half" layout of Llama / Gemma checkpoints: dims i and i + D/2 form a rotated pair."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angle = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
  if angle.ndim == 2:
    angle = angle[None]
  cos, sin = jnp.cos(angle)[:, :, None, :], jnp.sin(angle)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def axial_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary positions over several axes (RoPE-2D of image transformers: a patch's row and column): x
  [B, S, H, D] at integer positions [B, S, A] (or [S, A]); the head dims split into A equal parts, part
  a rotated by `rope` at positions[..., a]. A query-key score then depends on the two positions only
  through their offset along every axis."""
  axes, d = positions.shape[-1], x.shape[-1]
  if d % (2 * axes):
    raise ValueError(f"axial_rope: head_dim {d} does not split into {axes} axes of an even number of dims.")
  parts = jnp.split(x, axes, axis=-1)
  return jnp.concatenate([rope(part, positions[..., a], theta) for a, part in enumerate(parts)], axis=-1)


def prefix_segment_ids(positions: jax.Array, prefix_len: jax.Array, n_prefix: int) -> jax.Array:
  """int32 [B, len(positions)]: 0 at padded prefix slots (prefix_len <= j < n_prefix), else 1.

  A sequence that starts with a prefix of n_prefix slots, of which prefix_len are valid, masks its
  padded slots with these as query and key segment ids (padding matches nothing real).
  """
  j = positions[None, :]
  padded = (j >= prefix_len[:, None]) & (j < n_prefix)
  return jnp.where(padded, 0, 1).astype(jnp.int32)


class MultiHeadAttention(nn.Module):
  """Self- or cross-attention with GQA and an optional KV cache (self-attention only).

  Decoding: with `decode=True` the module keeps `cache/{cached_key,cached_value,cache_index}`
  variables sized by the length of the input it was initialised with; each call writes its keys at
  `index` and attends causally to everything written so far (the causal offset is the cache index).
  `prefix` = (prefix_len [B], n_prefix) adds the prefix-LM terms over the cache: the valid prefix is
  seen bidirectionally and its padded slots never, so prefill + step-by-step decoding equals the
  full forward with the same prefix mask.

  use_bias: biases on the four projections (CLIP, BERT, GPT-2, ...; mmjax's own models have none).
  rope_theta > 0: rotary positions (`rope`) on the self-attention's queries and keys, at the
  sequence index (plus the cache index when decoding; keys enter the cache rotated), or at the
  caller's `positions` of the call's tokens: int [B or 1, S] for one axis, [B or 1, S, A] for A
  (`axial_rope`).
  """

  num_heads: int
  head_dim: int
  num_kv_heads: Optional[int] = None
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  use_bias: bool = False
  rope_theta: float = 0.0

  @nn.compact
  def __call__(self, x, kv=None, mask: MaskSpec | None = None, decode: bool = False, prefix=None, positions=None):
    kv_heads = self.num_kv_heads or self.num_heads
    kv_in = x if kv is None else kv
    proj = lambda h, name, src: Dense(
      (h, self.head_dim),
      ("embed",),
      (("heads" if h == self.num_heads else "kv_heads"), "head_dim"),
      use_bias=self.use_bias,
      dtype=self.dtype,
      name=name,
    )(src)
    q = proj(self.num_heads, "query", x)
    k = proj(kv_heads, "key", kv_in)
    v = proj(kv_heads, "value", kv_in)
    if positions is not None and not (self.rope_theta and kv is None):
      raise ValueError("MultiHeadAttention: `positions` are rotary positions: self-attention with rope_theta > 0.")
    if self.rope_theta and kv is None:
      if positions is None:
        start = (
          self.get_variable("cache", "cache_index")[:, None]
          if decode and self.has_variable("cache", "cache_index")
          else 0
        )
        positions = start + jnp.arange(x.shape[1])[None]
      rotate = rope if positions.ndim == 2 else axial_rope
      q, k = rotate(q, positions, self.rope_theta), rotate(k, positions, self.rope_theta)
    if decode:
      if kv is not None:
        raise ValueError("MultiHeadAttention: the KV cache is for self-attention only.")
      k, v, mask = self._update_cache(k, v, prefix)
    q = constrain(q, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    groups = 1
    if kv is not None and kv.shape[0] != x.shape[0]:
      # Several query rows per memory row (e.g. 8 questions about one image): the group's queries
      # attend the shared memory together as one longer query sequence. Cross-attention has no
      # mask between queries, so this equals repeating the memory per row without projecting it
      # (or holding it) G times.
      groups = x.shape[0] // kv.shape[0]
      if groups * kv.shape[0] != x.shape[0]:
        raise ValueError(
          f"MultiHeadAttention: {x.shape[0]} query rows cannot share {kv.shape[0]} memory rows "
          "(the query batch must be a multiple of the memory batch)."
        )
      q = q.reshape(kv.shape[0], groups * q.shape[1], *q.shape[2:])
    out = attention(q, k, v, mask=mask, implementation=self.implementation)
    if groups > 1:
      out = out.reshape(x.shape[0], x.shape[1], *out.shape[2:])
    out = constrain(out, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    return Dense(x.shape[-1], ("heads", "head_dim"), ("embed",), use_bias=self.use_bias, dtype=self.dtype, name="out")(
      out
    )

  def _update_cache(self, k, v, prefix=None):
    initialised = self.has_variable("cache", "cached_key")
    batch = k.shape[0]
    ck = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cv = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    # One index per row (all equal) so that every cache leaf has a leading batch dim: beam search
    # and batched sampling can then tile and reorder the cache with one tree_map.
    ci = self.variable("cache", "cache_index", lambda: jnp.zeros((batch,), jnp.int32))
    if not initialised:  # init pass: shapes only, plain causal attention over the input
      return k, v, MaskSpec(causal=True)
    if k.shape[1] > ck.value.shape[1]:
      raise ValueError(f"KV cache holds {ck.value.shape[1]} positions; got a chunk of {k.shape[1]}.")
    index = ci.value[0]
    ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, index, 0, 0))
    cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, index, 0, 0))
    ci.value = ci.value + k.shape[1]
    offset = jnp.full((batch,), index, jnp.int32)
    if prefix is None:
      return ck.value, cv.value, MaskSpec(causal=True, causal_offset=offset)
    prefix_len, n_prefix = prefix
    q_seg = prefix_segment_ids(index + jnp.arange(k.shape[1]), prefix_len, n_prefix)
    kv_seg = prefix_segment_ids(jnp.arange(ck.value.shape[1]), prefix_len, n_prefix)
    return (
      ck.value,
      cv.value,
      MaskSpec(causal=True, causal_offset=offset, prefix_len=prefix_len, q_segment_ids=q_seg, kv_segment_ids=kv_seg),
    )


class TransformerBlock(nn.Module):
  """Pre-norm block: self-attention, optional (gated) cross-attention, MLP.

  The STYLE_FIELDS let one block class hold the pretrained families too: the norm and its eps,
  post_norm=True for BERT's x = norm(x + f(x)), biases, rotary positions.
  """

  num_heads: int
  head_dim: int
  mlp_dim: int
  num_kv_heads: Optional[int] = None
  cross_attention: bool = False
  gated_cross_attention: bool = False
  implementation: str = "auto"
  dtype: Dtype = jnp.float32
  mlp_activation: str = "gelu"  # MLP_ACTIVATIONS
  norm: str = "layernorm"  # NORMS
  norm_eps: float = 1e-6
  post_norm: bool = False
  attention_bias: bool = False
  mlp_bias: bool = True
  rope_theta: float = 0.0

  @nn.compact
  def __call__(
    self,
    x,
    self_mask: MaskSpec | None = None,
    memory=None,
    memory_mask: MaskSpec | None = None,
    decode: bool = False,
    prefix=None,
    positions=None,
  ):
    """`prefix` = (prefix_len, n_prefix) for a decoder whose sequence starts with a padded prefix
    (only read by the KV cache: outside decode mode `self_mask` already describes it). `positions`:
    the self-attention's rotary positions (MultiHeadAttention; None: the sequence index)."""
    attn = lambda name, rope_theta=0.0: MultiHeadAttention(
      self.num_heads,
      self.head_dim,
      self.num_kv_heads,
      self.implementation,
      self.dtype,
      use_bias=self.attention_bias,
      rope_theta=rope_theta,
      name=name,
    )
    norm = lambda name: Norm(self.dtype, self.norm, self.norm_eps, name=name)

    def residual(x, f, norm_name):
      if self.post_norm:
        return norm(norm_name)(x + f(x))
      return x + f(norm(norm_name)(x))

    x = residual(
      x,
      lambda h: attn("self_attention", self.rope_theta)(
        h, mask=self_mask, decode=decode, prefix=prefix, positions=positions
      ),
      "norm_self",
    )
    x = constrain_tokens(x)
    if self.cross_attention:
      if memory is None:
        raise ValueError("TransformerBlock(cross_attention=True) needs `memory`.")

      def cross(h):
        y = attn("cross_attention")(h, kv=memory, mask=memory_mask)
        if self.gated_cross_attention:
          # tanh(0) = 0: a new gated layer starts as the identity and opens as it learns (Flamingo).
          gate = self.param("cross_gate", param_with_axes(nn.initializers.zeros, ("norm",)), (1,), jnp.float32)
          y = jnp.tanh(gate).astype(y.dtype) * y
        return y

      x = constrain_tokens(residual(x, cross, "norm_cross"))
    mlp = MLP(self.mlp_dim, self.dtype, self.mlp_activation, self.mlp_bias, name="mlp")
    return constrain_tokens(residual(x, mlp, "norm_mlp"))


REMAT_POLICIES = (
  "none",
  "full",
  "dots_saveable",
  "dots_with_no_batch_dims_saveable",
  "nothing_saveable",
  "everything_saveable",
  "checkpoint_dots",
  "checkpoint_dots_with_no_batch_dims",
)


def block_class(remat: str | None = "none"):
  """TransformerBlock, rematerialised with `nn.remat` under the named policy unless remat="none".

  "full" recomputes everything in the backward pass (policy None); other names are
  `jax.checkpoint_policies` attributes ("dots_saveable" keeps matmul outputs, ...). Parameter names
  do not change: nn.remat wraps the class, the module keeps its name.
  """
  if remat in (None, "", "none", False):
    return TransformerBlock
  if remat not in REMAT_POLICIES:
    raise ValueError(f"model.remat={remat!r}: use one of {REMAT_POLICIES}.")
  policy = None if remat == "full" else getattr(jax.checkpoint_policies, remat)
  # static_argnums counts `self` as 0: argument 5 is `decode` (a Python bool).
  return nn.remat(TransformerBlock, policy=policy, static_argnums=(5,))


class _ScanStep(nn.Module):
  """One scanned layer: (carry, broadcast inputs) -> (carry, None) as nn.scan wants."""

  block: dict
  remat: str = "none"
  decode: bool = False

  @nn.compact
  def __call__(self, x, self_mask, memory, memory_mask, *extra):
    y = block_class(self.remat)(**self.block, name="block")(x, self_mask, memory, memory_mask, self.decode, *extra)
    return y, None


class ScannedBlocks(nn.Module):
  """`depth` identical TransformerBlocks run with nn.scan: one compiled layer body, parameters
  stacked on a leading axis whose logical name is "layers" (replicated by the rules table).

  In decode mode the KV cache is stacked on axis 1 ([B, layers, ...]) so every cache leaf keeps its
  leading batch dim (beam search reorders the cache along axis 0).
  """

  depth: int
  block: dict
  remat: str = "none"

  @nn.compact
  def __call__(self, x, self_mask=None, memory=None, memory_mask=None, decode: bool = False, *extra):
    scan = nn.scan(
      _ScanStep,
      variable_axes={"params": 0, "cache": 1},
      split_rngs={"params": True},
      in_axes=nn.broadcast,
      length=self.depth,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = scan(self.block, self.remat, decode, name="layers")(x, self_mask, memory, memory_mask, *extra)
    return x


def run_blocks(
  x,
  *,
  depth: int,
  block: dict,
  remat: str = "none",
  scan: bool = False,
  prefix: str = "block",
  self_mask=None,
  memory=None,
  memory_mask=None,
  decode: bool = False,
):
  """Applies `depth` TransformerBlock(**block) layers inside a compact method.

  scan=False: children named f"{prefix}_{i}" (the names checkpoints use); scan=True: one
  ScannedBlocks child named f"{prefix}s" with stacked parameters.
  """
  if scan:
    return ScannedBlocks(depth, block, remat, name=f"{prefix}s")(x, self_mask, memory, memory_mask, decode)
  cls = block_class(remat)
  for i in range(depth):
    x = cls(**block, name=f"{prefix}_{i}")(x, self_mask, memory, memory_mask, decode)
  return x


def pixel_coordinates(h: int, w: int) -> np.ndarray:
  """[h, w, 2] float32: each pixel centre's (x, y), scaled to [-1, 1] across the image."""
  y = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
  x = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
  return np.stack(np.broadcast_arrays(x[None, :], y[:, None]), axis=-1)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embedding [h*w, dim] (MoCo v3 / big_vision)."""
  if dim % 4:
    raise ValueError(f"sin-cos 2-D positions need a width divisible by 4; got {dim}.")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
  y = np.einsum("m,d->md", y.ravel(), omega)
  x = np.einsum("m,d->md", x.ravel(), omega)
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def sincos_1d(n: int, dim: int) -> np.ndarray:
  """[n, dim] float32 sin-cos codes of the positions 0..n-1 with wavelengths from 2 to 4n positions
  (geometric), so that near positions have similar codes at every scale of an n-long axis."""
  half = dim // 2
  wavelength = 2.0 * (2.0 * max(n, 1)) ** (np.arange(half) / max(half - 1, 1))
  angle = np.arange(n, dtype=np.float64)[:, None] * (2 * np.pi / wavelength)[None, :]
  code = np.concatenate([np.sin(angle), np.cos(angle)], axis=1)
  return np.pad(code, ((0, 0), (0, dim - 2 * half))).astype(np.float32)


def mixed_radix_digits(ids: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """ids int [...] in [0, prod(levels)) -> their digits int32 [..., len(levels)] in the mixed radix of
  `levels`, digit 0 the lowest: id = sum_d digit_d * prod(levels[:d])."""
  basis = np.cumprod((1,) + tuple(int(v) for v in levels[:-1]))
  return (ids.astype(jnp.int32)[..., None] // jnp.asarray(basis, jnp.int32)) % jnp.asarray(levels, jnp.int32)


class Embed(nn.Module):
  """Token embedding whose table doubles as the output projection (`attend`).

  ordinal_tail=n > 0: the last n ids are ordered values (location tokens: bins along an image side)
  and start from `sincos_1d` codes instead of random vectors (scaled to the same 0.02 per entry), so
  that neighbouring values start with similar embeddings and, the table being the output projection
  too, similar logits: what the model learns for one bin carries over to its neighbours.

  factored_levels=(L_0, .., L_{n-1}): the K = prod(L) ids from factored_start on are mixed-radix
  numbers (mixed_radix_digits; an FSQ image code is one digit per code dimension), and the row of id
  k is the sum of one learned vector per digit, sum_d digit_table_d[digit_d(k)] (parameter
  "digit_embedding", sum(L) rows). The table being the output projection too, the logit of k is
  sum_d <x, digit_table_d[digit_d(k)]>, so a softmax restricted to the block is the product of one
  softmax per digit: every combination of digits seen apart gets its embedding and its probability,
  including combinations never seen as a whole (the plain table's rows for those ids would only ever
  be pushed down). The plain table's rows of the block are then unused (they get no gradient).
  """

  vocab_size: int
  features: int
  dtype: Dtype = jnp.float32
  ordinal_tail: int = 0
  factored_start: int = 0
  factored_levels: tuple[int, ...] = ()

  def setup(self):
    if not 0 <= self.ordinal_tail <= self.vocab_size:
      raise ValueError(f"Embed: ordinal_tail={self.ordinal_tail} must be in [0, vocab_size={self.vocab_size}].")
    if self.factored_levels:
      levels = tuple(int(v) for v in self.factored_levels)
      end = self.factored_start + math.prod(levels)
      if min(levels) < 1 or self.factored_start < 0 or end > self.vocab_size - self.ordinal_tail:
        raise ValueError(
          f"Embed: the factored block [{self.factored_start}, {end}) of levels {levels} does not fit in "
          f"vocab_size={self.vocab_size} before the ordinal tail ({self.ordinal_tail})."
        )
      # Each row of the block is a sum of len(levels) vectors: init them at 0.02 / sqrt(n) so that
      # the sum starts at the scale of the other rows.
      self.digit_embedding = self.param(
        "digit_embedding",
        param_with_axes(nn.initializers.normal(0.02 / math.sqrt(len(levels))), (None, "embed")),
        (sum(levels), self.features),
        jnp.float32,
      )

    def init(key, shape, dtype=jnp.float32):
      table = nn.initializers.normal(0.02)(key, shape, dtype)
      if self.ordinal_tail:
        code = sincos_1d(self.ordinal_tail, shape[1]) * (0.02 * np.sqrt(2.0))  # sin/cos entries have rms 1/sqrt(2)
        table = table.at[shape[0] - self.ordinal_tail :].set(jnp.asarray(code, dtype))
      return table

    self.embedding = self.param(
      "embedding",
      param_with_axes(init, ("vocab", "embed")),
      (self.vocab_size, self.features),
      jnp.float32,
    )

  @property
  def table(self) -> jax.Array:
    """The [vocab_size, features] table, the factored block's rows composed from their digits."""
    if not self.factored_levels:
      return self.embedding
    levels = tuple(int(v) for v in self.factored_levels)
    k = math.prod(levels)
    offsets = jnp.asarray(np.cumsum((0,) + levels[:-1]), jnp.int32)
    rows = jnp.take(self.digit_embedding, mixed_radix_digits(jnp.arange(k), levels) + offsets, axis=0).sum(axis=1)
    return jax.lax.dynamic_update_slice_in_dim(self.embedding, rows, self.factored_start, axis=0)

  def __call__(self, tokens):
    return jnp.take(self.table, tokens, axis=0).astype(self.dtype)

  def attend(self, x):
    logits = jnp.einsum("...d,vd->...v", x, self.table.astype(self.dtype))
    return constrain(logits, ("act_batch", "act_len", "act_vocab"))
