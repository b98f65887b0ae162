"""GPU attention routes: "triton" (our fused kernel in mmjax.kernels) and "cudnn".

Both raise UnsupportedAttention instead of falling back, so a request for a specific kernel either
runs that kernel or says why not. The mmjax.kernels Triton path is imported lazily: importing triton
and jax_triton costs time and, for jax_triton, fails on CPU-only installs.
"""
from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp

from mmjax.attention import dispatch
from mmjax.attention.dispatch import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec


def on_gpu() -> bool:
  return jax.default_backend() == "gpu"


def jax_triton_available() -> bool:
  return importlib.util.find_spec("jax_triton") is not None


def cudnn_unsupported_reason(mask: MaskSpec | None) -> str | None:
  """Why jax.nn.dot_product_attention(implementation="cudnn") cannot express `mask`, or None."""
  if mask is None:
    return None
  if mask.q_segment_ids is not None:
    return "MaskSpec.q_segment_ids / kv_segment_ids (cuDNN path takes no segment ids)"
  if mask.prefix_len is not None:
    return "MaskSpec.prefix_len (cuDNN has no prefix-LM mask)"
  if mask.causal_offset is not None:
    return "MaskSpec.causal_offset (cuDNN's causal mask has no per-example offset)"
  return None


def triton_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  if not on_gpu():
    raise UnsupportedAttention(f"'triton' attention needs a CUDA GPU; default backend is "
                               f"{jax.default_backend()!r}.")
  if not jax_triton_available():
    raise UnsupportedAttention("'triton' attention needs the jax_triton package (not installed).")
  from mmjax.kernels import triton_call
  try:
    return triton_call.flash_attention(q, k, v, mask, scale, softcap)
  except ValueError as e:  # shape limits of the kernel (head dim, ...)
    raise UnsupportedAttention(f"'triton' attention: {e}") from e


def cudnn_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  if not on_gpu():
    raise UnsupportedAttention(f"'cudnn' attention needs a CUDA GPU; default backend is "
                               f"{jax.default_backend()!r}.")
  reason = cudnn_unsupported_reason(mask)
  if reason is not None:
    raise UnsupportedAttention(f"'cudnn' attention cannot express {reason}; use 'triton', "
                               "'xla_chunked' or 'xla'.")
  if softcap is not None:
    raise UnsupportedAttention("'cudnn' attention has no logit soft-cap; use 'triton' or 'xla'.")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise UnsupportedAttention(f"'cudnn' attention needs bf16/fp16 inputs; got {q.dtype}.")
  kv_len = None
  if mask is not None and mask.kv_valid_len is not None:
    kv_len = jnp.asarray(mask.kv_valid_len, jnp.int32)
  # Fully masked rows (kv_valid_len = 0) are cuDNN-defined, not guaranteed 0; callers needing
  # the mmjax contract for such rows should not route them here.
  return jax.nn.dot_product_attention(
      q, k, v, scale=scale, is_causal=bool(mask is not None and mask.causal),
      key_value_seq_lengths=kv_len, implementation="cudnn")


dispatch.IMPLEMENTATIONS["triton"] = triton_attention
dispatch.IMPLEMENTATIONS["cudnn"] = cudnn_attention
