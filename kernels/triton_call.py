"""JAX entry point for the Triton flash-attention kernels (mmjax.kernels.flash_attention).

`flash_attention` is a jax.custom_vjp whose forward and backward launch the kernels through
jax_triton. jax_triton is imported inside the launcher because it fails to import on CPU-only JAX,
and `import mmjax.kernels.triton_call` must keep working there (tests, CPU tooling).

The custom_vjp wiring is built by `make_attention(forward_impl, backward_impl)` so that tests can
plug in a different launcher (mmjax.kernels.interpret runs the same kernels under Triton's
interpreter via jax.pure_callback) and exercise exactly this wiring on a CPU.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from mmjax.kernels import flash_attention as fa
from mmjax.kernels.mask import MaskSpec, tile_map


def prepare(q, k, mask: MaskSpec | None, scale, softcap, block_q: int, block_k: int,
            num_warps: int = 4, num_stages: int = 2):
  """Turns (mask, scale, softcap, blocks) into the kernels' static config and mask operands.

  Returns (cfg, mask_arrays) with mask_arrays = (tiles, causal_offset, prefix_len, q_segment_ids,
  kv_segment_ids, kv_valid_len), all int arrays; absent fields become a 1-element dummy because a
  kernel pointer argument cannot be omitted (its constexpr HAS_* flag keeps it unread).
  """
  mask = mask if mask is not None else MaskSpec()
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  cfg = fa.KernelConfig(
      scale=float(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale),
      softcap=float(softcap or 0.0), causal=mask.causal, has_prefix=mask.prefix_len is not None,
      has_segments=mask.q_segment_ids is not None, has_kv_len=mask.kv_valid_len is not None,
      block_q=block_q, block_k=block_k, num_warps=num_warps, num_stages=num_stages)
  fa.check_shapes(q, k, k, cfg)
  dummy = jnp.zeros((1,), jnp.int32)

  def as_i32(x, shape):
    return dummy if x is None else jnp.broadcast_to(jnp.asarray(x, jnp.int32), shape)

  tiles = tile_map(mask, b, sq, skv, block_q, block_k)
  offset = jnp.zeros((b,), jnp.int32) if mask.causal_offset is None else as_i32(mask.causal_offset, (b,))
  arrays = (tiles, offset, as_i32(mask.prefix_len, (b,)), as_i32(mask.q_segment_ids, (b, sq)),
            as_i32(mask.kv_segment_ids, (b, skv)), as_i32(mask.kv_valid_len, (b,)))
  return cfg, arrays


def make_attention(forward_impl, backward_impl):
  """Builds attn(q, k, v, mask_arrays, cfg) with a custom VJP from two launch functions:

    forward_impl(q, k, v, mask_arrays, cfg) -> (out, lse)
    backward_impl(q, k, v, out, lse, dout, mask_arrays, cfg) -> (dq, dk, dv)
  """
  @functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
  def attn(q, k, v, mask_arrays, cfg):
    return forward_impl(q, k, v, mask_arrays, cfg)[0]

  def attn_fwd(q, k, v, mask_arrays, cfg):
    out, lse = forward_impl(q, k, v, mask_arrays, cfg)
    return out, (q, k, v, mask_arrays, out, lse)

  def attn_bwd(cfg, residuals, dout):
    q, k, v, mask_arrays, out, lse = residuals
    dq, dk, dv = backward_impl(q, k, v, out, lse, dout.astype(q.dtype), mask_arrays, cfg)
    # Mask operands are integer data: no cotangent.
    return dq, dk, dv, None

  attn.defvjp(attn_fwd, attn_bwd)
  return attn


def _jax_triton_launch(kernel, grid, operands, outputs, meta, cfg: fa.KernelConfig):
  try:
    import jax_triton as jt  # lazily: fails to import on CPU-only JAX
  except ImportError as e:
    raise RuntimeError("flash_attention needs jax_triton and a CUDA GPU "
                       f"(import jax_triton failed: {e}).") from e
  out_shape = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape, dtype in outputs]
  return list(jt.triton_call(*operands, kernel=kernel, out_shape=out_shape, grid=grid,
                             num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta))


_gpu_attention = make_attention(
    functools.partial(fa.forward, _jax_triton_launch),
    lambda q, k, v, out, lse, dout, arrays, cfg: fa.backward(
        _jax_triton_launch, q, k, v, out, lse, dout, arrays, cfg))


def flash_attention(q, k, v, mask: MaskSpec | None = None, scale: float | None = None,
                    softcap: float | None = None, *, block_q: int = 64, block_k: int = 64,
                    num_warps: int = 4, num_stages: int = 2):
  """Fused attention on a GPU via jax_triton. q [B, Sq, HQ, D], k/v [B, Skv, HKV, D].

  Differentiable in q, k, v. Fully masked query rows give output 0 and gradient 0.
  """
  cfg, arrays = prepare(q, k, mask, scale, softcap, block_q, block_k, num_warps, num_stages)
  return _gpu_attention(q, k, v, arrays, cfg)
