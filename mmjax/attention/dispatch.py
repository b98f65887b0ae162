"""`attention`: validates inputs once, then routes to an implementation.

Implementations (see README "Attention" for the `auto` table):
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
from typing import Callable

import jax
import jax.numpy as jnp

from mmjax.attention.xla import xla_attention
from mmjax.kernels.mask import MaskSpec


# Above this many (query, key) pairs per head, auto avoids materialising the logits.
LONG_SEQUENCE_PAIRS = 4096 * 4096


class UnsupportedAttention(ValueError):
  """The requested implementation cannot compute this attention (shape, dtype, mask or platform)."""


# name -> fn(q, k, v, mask, scale, softcap) -> out. Other modules register themselves here.
IMPLEMENTATIONS: dict[str, Callable] = {"xla": xla_attention}


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


def _auto(q, k, v, mask, scale, softcap):
  return IMPLEMENTATIONS[choose_auto(q, k, mask, softcap)](q, k, v, mask, scale, softcap)


def choose_auto(q, k, mask: MaskSpec | None, softcap) -> str:
  """Documented `auto` policy (see the table in the module docstring)."""
  platform = jax.default_backend()
  long = q.shape[1] * k.shape[1] > LONG_SEQUENCE_PAIRS
  if platform == "gpu":
    from mmjax.attention import gpu  # registers triton/cudnn; imported here to avoid a cycle
    if gpu.jax_triton_available() and "triton" in IMPLEMENTATIONS:
      return "triton"
    if (gpu.cudnn_unsupported_reason(mask) is None and softcap is None
        and q.dtype in (jnp.bfloat16, jnp.float16) and "cudnn" in IMPLEMENTATIONS):
      return "cudnn"
  elif platform == "tpu" and "splash" in IMPLEMENTATIONS:
    return "splash"
  if long and "xla_chunked" in IMPLEMENTATIONS:
    return "xla_chunked"
  return "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: MaskSpec | None = None,
              scale: float | None = None, softcap: float | None = None,
              implementation: str = "auto") -> jax.Array:
  """Multi-head attention with a mask description. Returns [B, Sq, Hq, D] in q's dtype."""
  _validate(q, k, v, mask)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  if implementation == "auto":
    return _auto(q, k, v, mask, scale, softcap)
  if implementation not in IMPLEMENTATIONS:
    raise UnsupportedAttention(
        f"attention implementation {implementation!r} is not available here; known: "
        f"{sorted(IMPLEMENTATIONS) + ['auto']}.")
  return IMPLEMENTATIONS[implementation](q, k, v, mask, scale, softcap)
