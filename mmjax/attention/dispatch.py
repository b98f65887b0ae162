"""`attention`: validates inputs once, then routes to an implementation.

Implementations (mmjax.registry.BUILTIN["attention"]; a config may also name its own
"module:function" with the same signature):
  xla          reference; any platform, any mask.
  xla_chunked  blockwise online softmax in plain JAX, O(S) memory; any platform, any mask.
  triton       our fused Triton kernel (mmjax.kernels), GPU only.
  cudnn        jax.nn.dot_product_attention(implementation="cudnn") when the mask fits it; GPU only.
  splash       Pallas TPU splash attention from the same mask description; TPU (or interpret mode).
  auto         the fastest correct choice for the platform and mask (table below).
An implementation that cannot serve a request raises UnsupportedAttention naming the reason; there
is no silent fallback except inside `auto`, whose choices are documented.

`auto` table (choose_auto), first matching row wins:
  platform  condition                                                   choice
  gpu       jax_triton importable                                       triton
  gpu       mask has no segment ids / prefix_len / causal_offset,
            no softcap, bf16/fp16                                       cudnn
  tpu       always                                                      splash (raises on masks
                                                                        it cannot express)
  any       Sq * Skv > 4096 * 4096                                      xla_chunked
  any       otherwise                                                   xla
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from mmjax import registry
from mmjax.attention import cudnn, triton
from mmjax.attention.errors import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec

# Above this many (query, key) pairs per head, auto avoids materialising the logits.
LONG_SEQUENCE_PAIRS = 4096 * 4096


IMPLEMENTATIONS = tuple(registry.names("attention"))  # the built-in names; "auto" chooses among them


def backend(name: str):
  """The backend function `name` (a built-in name or "module:function")."""
  try:
    return registry.get("attention", name, "attention implementation")
  except ValueError as e:
    raise UnsupportedAttention(f"{e} ('auto' chooses for the platform.)") from e


def _validate(q, k, v, mask: MaskSpec | None):
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention expects [B, S, H, D] arrays; got q{q.shape} k{k.shape} v{v.shape}.")
  if k.shape != v.shape:
    raise ValueError(f"attention: k{k.shape} and v{v.shape} must have the same shape.")
  if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"attention: batch and head dim of q{q.shape} and k{k.shape} must match.")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: query heads ({q.shape[2]}) must be a multiple of key heads ({k.shape[2]}).")
  if mask is not None:
    mask.validate(q.shape[0], q.shape[1], k.shape[1])


def choose_auto(q, k, mask: MaskSpec | None, softcap) -> str:
  """Documented `auto` policy (see the table in the module docstring)."""
  platform = jax.default_backend()
  long = q.shape[1] * k.shape[1] > LONG_SEQUENCE_PAIRS
  if platform == "gpu":
    if triton.jax_triton_available():
      return "triton"
    if cudnn.cudnn_unsupported_reason(mask) is None and softcap is None and q.dtype in (jnp.bfloat16, jnp.float16):
      return "cudnn"
  elif platform == "tpu":
    return "splash"
  if long:
    return "xla_chunked"
  return "xla"


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  mask: MaskSpec | None = None,
  scale: float | None = None,
  softcap: float | None = None,
  implementation: str = "auto",
) -> jax.Array:
  """Multi-head attention with a mask description. Returns [B, Sq, Hq, D] in q's dtype."""
  _validate(q, k, v, mask)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  if implementation == "auto":
    implementation = choose_auto(q, k, mask, softcap)
  return backend(implementation)(q, k, v, mask, scale, softcap)
