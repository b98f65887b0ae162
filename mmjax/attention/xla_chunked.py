"""`xla_chunked`: blockwise online-softmax attention in plain JAX, O(S) memory on any platform.

Forward: lax.scan over key blocks with a running max / normaliser / accumulator (FlashAttention's
recurrence), never materialising more than [Sq, block_k] logits per head. Backward is a custom VJP
that recomputes each block's probabilities from the saved logsumexp, again one key block at a time.
Plain autodiff through the scan would save every block's logits and bring back S x S memory.

The mask is evaluated per block from positions with the MaskSpec rule (mask._allowed), never as a
dense S x S array. Fully masked rows: output 0, lse = +inf, so their gradients are exactly 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmjax.kernels.mask import MaskSpec, _allowed

DEFAULT_BLOCK_K = 512


def _blocks(x, block_k):
  """[B, Skv, H, D] -> [nk, B, H, block_k, D], zero-padded at the end."""
  b, s, h, d = x.shape
  nk = -(-s // block_k)
  x = jnp.pad(x, ((0, 0), (0, nk * block_k - s), (0, 0), (0, 0)))
  return x.reshape(b, nk, block_k, h, d).transpose(1, 0, 3, 2, 4)


def _unblocks(x, kv_len):
  """Inverse of _blocks: [nk, B, H, block_k, D] -> [B, Skv, H, D]."""
  nk, b, h, bk, d = x.shape
  return x.transpose(1, 0, 3, 2, 4).reshape(b, nk * bk, h, d)[:, :kv_len]


def _block_logits(qg, kb, kpos, mask, kv_len, scale, softcap):
  """Capped logits [B, Hkv, G, Sq, bk] in float32 and the bool mask broadcastable to them."""
  s = jnp.einsum("bhgqd,bhkd->bhgqk", qg, kb, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    s = softcap * jnp.tanh(s / softcap)
  b, sq = qg.shape[0], qg.shape[3]
  ok = (kpos < kv_len)[None, None, :]  # padding of the last block
  if mask is not None and not mask.is_empty:
    ok = ok & _allowed(mask, b, jnp.arange(sq), kpos)
  return s, jnp.broadcast_to(ok, (b, sq, kpos.shape[0]))[:, None, None]


def _group(q, hkv):
  b, sq, hq, d = q.shape
  return q.reshape(b, sq, hkv, hq // hkv, d).transpose(0, 2, 3, 1, 4)  # [B, Hkv, G, Sq, D]


def _ungroup(x):
  b, hkv, g, sq, d = x.shape
  return x.transpose(0, 3, 1, 2, 4).reshape(b, sq, hkv * g, d)


def _forward(q, k, v, mask, scale, softcap, block_k):
  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  qg = _group(q, hkv)
  kpos = jnp.arange(-(-skv // block_k) * block_k).reshape(-1, block_k)

  def step(carry, xs):
    m, l, acc = carry
    kb, vb, kp = xs
    s, ok = _block_logits(qg, kb, kp, mask, skv, scale, softcap)
    s = jnp.where(ok, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(-1))
    m_safe = jnp.where(jnp.isneginf(m_new), 0.0, m_new)  # all masked so far: avoid -inf - -inf
    p = jnp.exp(s - m_safe[..., None])
    alpha = jnp.exp(m - m_safe)
    acc = acc * alpha[..., None] + jnp.einsum(
      "bhgqk,bhkd->bhgqd", p.astype(vb.dtype), vb, preferred_element_type=jnp.float32
    )
    return (m_new, l * alpha + p.sum(-1), acc), None

  shape = (b, hkv, hq // hkv, sq)
  init = (jnp.full(shape, -jnp.inf, jnp.float32), jnp.zeros(shape, jnp.float32), jnp.zeros(shape + (d,), jnp.float32))
  (m, l, acc), _ = jax.lax.scan(step, init, (_blocks(k, block_k), _blocks(v, block_k), kpos))
  empty = l == 0.0
  out = acc / jnp.where(empty, 1.0, l)[..., None]
  lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))
  return _ungroup(out).astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _chunked(q, k, v, mask, scale, softcap, block_k):
  return _forward(q, k, v, mask, scale, softcap, block_k)[0]


def _chunked_fwd(q, k, v, mask, scale, softcap, block_k):
  out, lse = _forward(q, k, v, mask, scale, softcap, block_k)
  return out, (q, k, v, mask, out, lse)


def _chunked_bwd(scale, softcap, block_k, residuals, dout):
  q, k, v, mask, out, lse = residuals
  skv, hkv = k.shape[1], k.shape[2]
  qg = _group(q, hkv)
  dog = _group(dout, hkv)
  delta = jnp.einsum("bhgqd,bhgqd->bhgq", dog.astype(jnp.float32), _group(out, hkv).astype(jnp.float32))
  kpos = jnp.arange(-(-skv // block_k) * block_k).reshape(-1, block_k)

  def step(dq, xs):
    kb, vb, kp = xs
    s, ok = _block_logits(qg, kb, kp, mask, skv, scale, softcap)
    p = jnp.where(ok, jnp.exp(s - lse[..., None]), 0.0)  # lse = +inf on empty rows -> p = 0
    dv = jnp.einsum("bhgqk,bhgqd->bhkd", p.astype(dog.dtype), dog, preferred_element_type=jnp.float32)
    dp = jnp.einsum("bhgqd,bhkd->bhgqk", dog, vb, preferred_element_type=jnp.float32)
    ds = p * (dp - delta[..., None])
    if softcap is not None:
      ds = ds * (1.0 - jnp.square(s / softcap))  # d tanh = 1 - tanh^2
    ds = ds * scale
    dq = dq + jnp.einsum("bhgqk,bhkd->bhgqd", ds, kb.astype(jnp.float32))
    dk = jnp.einsum("bhgqk,bhgqd->bhkd", ds, qg.astype(jnp.float32))
    return dq, (dk, dv)

  dq, (dk, dv) = jax.lax.scan(step, jnp.zeros(qg.shape, jnp.float32), (_blocks(k, block_k), _blocks(v, block_k), kpos))
  return (
    _ungroup(dq).astype(q.dtype),
    _unblocks(dk, skv).astype(k.dtype),
    _unblocks(dv, skv).astype(v.dtype),
    None,
  )  # the mask is integer data


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def xla_chunked(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None, block_k: int = DEFAULT_BLOCK_K):
  """The "xla_chunked" backend (mmjax.registry); block_k is clipped to the key length."""
  block_k = max(1, min(block_k, k.shape[1]))
  return _chunked(q, k, v, mask, float(scale), None if softcap is None else float(softcap), block_k)
