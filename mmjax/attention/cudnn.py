""" "cudnn": jax.nn.dot_product_attention(implementation="cudnn") when the mask fits it; GPU only.

Raises UnsupportedAttention (naming what cuDNN cannot express) instead of falling back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.attention.errors import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec


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


def cudnn_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  if jax.default_backend() != "gpu":
    raise UnsupportedAttention(f"'cudnn' attention needs a CUDA GPU; default backend is {jax.default_backend()!r}.")
  reason = cudnn_unsupported_reason(mask)
  if reason is not None:
    raise UnsupportedAttention(f"'cudnn' attention cannot express {reason}; use 'triton', 'xla_chunked' or 'xla'.")
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
    q,
    k,
    v,
    scale=scale,
    is_causal=bool(mask is not None and mask.causal),
    key_value_seq_lengths=kv_len,
    implementation="cudnn",
  )
