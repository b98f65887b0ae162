"""Straightforward XLA attention: the reference the other implementations are tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.kernels.mask import MaskSpec


def xla_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  """Materialises the [B, H, Sq, Skv] logits; computes softmax in float32."""
  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  group = hq // hkv
  qg = q.reshape(b, sq, hkv, group, d)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  if mask is not None and not mask.is_empty:
    allowed = mask.dense(b, sq, skv)[:, None, None]  # [B, 1, 1, Sq, Skv]
    logits = jnp.where(allowed, logits, -jnp.inf)
    # Fully masked rows: softmax of all -inf is NaN; define them as output 0 instead.
    row_ok = allowed.any(-1, keepdims=True)
    logits = jnp.where(row_ok, logits, 0.0)
    probs = jax.nn.softmax(logits, axis=-1) * row_ok
  else:
    probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.reshape(b, sq, hq, d).astype(q.dtype)
