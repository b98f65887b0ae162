""" "splash": Pallas TPU splash attention fed from the MaskSpec.

Splash masks are static (numpy) per head, while MaskSpec's causal_offset / prefix_len /
kv_valid_len are per-example runtime arrays. We therefore map:
  causal (no offset)  -> splash CausalMask (static)
  segment ids         -> splash SegmentIds (runtime)
  kv_valid_len        -> folded into kv segment ids: padded keys get an id no query has
and raise UnsupportedAttention for causal_offset and prefix_len.

Only TPU is supported: splash's interpret mode relies on TPU-specific Pallas primitives and is not
a CPU code path we test, so non-TPU backends raise rather than pretend.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.attention.errors import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec

# Padded keys get this segment id; real segment ids must be >= 0 for the fold to be exact.
_PAD_SEGMENT = -1


def splash_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  if jax.default_backend() != "tpu":
    raise UnsupportedAttention(f"'splash' attention needs a TPU; default backend is {jax.default_backend()!r}.")
  mask = mask if mask is not None else MaskSpec()
  if mask.causal_offset is not None:
    raise UnsupportedAttention("'splash' cannot express MaskSpec.causal_offset (static masks only).")
  if mask.prefix_len is not None:
    raise UnsupportedAttention("'splash' cannot express MaskSpec.prefix_len (static masks only).")
  from jax.experimental.pallas.ops.tpu.splash_attention import (
    splash_attention_kernel as sk,
    splash_attention_mask as sm,
  )

  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  head = sm.CausalMask((sq, skv)) if mask.causal else sm.FullMask((sq, skv))
  kernel = sk.make_splash_mha(
    sm.MultiHeadMask([head] * hq), head_shards=1, q_seq_shards=1, attn_logits_soft_cap=softcap
  )
  segments = None
  if mask.q_segment_ids is not None or mask.kv_valid_len is not None:
    q_ids = jnp.zeros((b, sq), jnp.int32) if mask.q_segment_ids is None else mask.q_segment_ids
    kv_ids = jnp.zeros((b, skv), jnp.int32) if mask.kv_segment_ids is None else mask.kv_segment_ids
    if mask.kv_valid_len is not None:
      kv_ids = jnp.where(jnp.arange(skv)[None] < mask.kv_valid_len[:, None], kv_ids, _PAD_SEGMENT)
    segments = sk.SegmentIds(q=q_ids.astype(jnp.int32), kv=kv_ids.astype(jnp.int32))
  # Splash wants [H, S, D] per example, all heads of k/v present (repeat for GQA), q pre-scaled.
  qh = (q * scale).astype(q.dtype).transpose(0, 2, 1, 3)
  kh = jnp.repeat(k, hq // hkv, axis=2).transpose(0, 2, 1, 3)
  vh = jnp.repeat(v, hq // hkv, axis=2).transpose(0, 2, 1, 3)
  if segments is None:
    out = jax.vmap(kernel)(qh, kh, vh)
  else:
    out = jax.vmap(lambda q_, k_, v_, s_: kernel(q_, k_, v_, segment_ids=s_))(qh, kh, vh, segments)
  return out.transpose(0, 2, 1, 3).astype(q.dtype)
