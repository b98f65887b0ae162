"""JAX entry point for the Triton flash-attention kernels (mmjax.kernels.flash_attention).

`flash_attention` is a jax.custom_vjp whose forward and backward launch the kernels through
jax_triton. jax_triton is imported inside the launcher because it fails to import on CPU-only JAX,
and `import mmjax.kernels.triton_call` must keep working there (tests, CPU tooling).

The custom_vjp wiring is built by `make_attention(forward_impl, backward_impl)` so that tests can
plug in a different launcher (mmjax.kernels.interpret runs the same kernels under Triton's
interpreter via jax.pure_callback) and exercise exactly this wiring on a CPU.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from mmjax.kernels import flash_attention as fa
from mmjax.kernels.mask import MaskSpec, tile_map, tile_spans


# Shared memory the kernels may plan for per program (H100: 227 KiB; leave room for the
# compiler's own buffers and the A100's 163 KiB).
SHARED_MEMORY_BUDGET = 160 * 1024

# Measured on one H100 (bf16, D=128; kernels/BENCHMARKS.md): the best forward and
# forward+backward among the configurations tried there.
DEFAULT_FWD = fa.Tiling(block_q=64, block_k=64, num_warps=4, num_stages=3)
DEFAULT_BWD = fa.Tiling(block_q=64, block_k=64, num_warps=4, num_stages=2)


def fit_tiling(tiling: fa.Tiling, head_dim: int, itemsize: int, square: bool = False) -> fa.Tiling:
  """`tiling` with its blocks halved (block_k first) until one query tile plus `num_stages`
  buffered key and value tiles fit SHARED_MEMORY_BUDGET. Without this, large head dims in float32
  ask for more shared memory than any GPU has (D=128: 295 KB asked of the H100's 227 KB).
  float32 rows count twice: the TF32x3 products keep a high and a low part of each operand."""
  row_bytes = fa.block_d(head_dim) * itemsize * (2 if itemsize == 4 else 1)
  block_q, block_k = tiling.block_q, tiling.block_k
  while (block_q + 2 * tiling.num_stages * block_k) * row_bytes > SHARED_MEMORY_BUDGET and block_q > 16:
    if square:  # the backward's tiles must stay square (fa.check_shapes)
      block_q, block_k = block_q // 2, block_k // 2
    elif block_k >= block_q:
      block_k //= 2
    else:
      block_q //= 2
  return dataclasses.replace(tiling, block_q=block_q, block_k=block_k)


def prepare(q, k, mask: MaskSpec | None, scale, softcap, fwd: fa.Tiling | None = None,
            bwd: fa.Tiling | None = None):
  """Turns (mask, scale, softcap, tilings) into the kernels' static config and mask operands.

  A tiling left as None is DEFAULT_FWD / DEFAULT_BWD fitted to the head dim and dtype.

  Returns (cfg, mask_arrays) with mask_arrays = (tiles, row_spans, col_spans) of the forward's
  blocks, the same three for the backward's, then causal_offset, prefix_len, q_segment_ids,
  kv_segment_ids, kv_valid_len; all int arrays. Absent fields become a 1-element dummy because a
  kernel pointer argument cannot be omitted (its constexpr HAS_* flag keeps it unread).
  """
  mask = mask if mask is not None else MaskSpec()
  itemsize = jnp.dtype(q.dtype).itemsize
  fwd = fwd or fit_tiling(DEFAULT_FWD, q.shape[-1], itemsize)
  bwd = bwd or fit_tiling(DEFAULT_BWD, q.shape[-1], itemsize, square=True)
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  cfg = fa.KernelConfig(
      scale=float(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale),
      softcap=float(softcap or 0.0), causal=mask.causal, has_prefix=mask.prefix_len is not None,
      has_segments=mask.q_segment_ids is not None, has_kv_len=mask.kv_valid_len is not None,
      fwd=fwd, bwd=bwd)
  fa.check_shapes(q, k, k, cfg)
  dummy = jnp.zeros((1,), jnp.int32)

  def as_i32(x, shape):
    return dummy if x is None else jnp.broadcast_to(jnp.asarray(x, jnp.int32), shape)

  def tile_arrays(t: fa.Tiling):
    tiles = tile_map(mask, b, sq, skv, t.block_q, t.block_k)
    return (tiles, *tile_spans(tiles))

  fwd_tiles = tile_arrays(fwd)
  bwd_tiles = fwd_tiles if (bwd.block_q, bwd.block_k) == (fwd.block_q, fwd.block_k) else tile_arrays(bwd)
  offset = jnp.zeros((b,), jnp.int32) if mask.causal_offset is None else as_i32(mask.causal_offset, (b,))
  arrays = (*fwd_tiles, *bwd_tiles, offset, as_i32(mask.prefix_len, (b,)),
            as_i32(mask.q_segment_ids, (b, sq)),
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


def _jax_triton_launch(kernel, grid, operands, outputs, meta, tiling: fa.Tiling):
  try:
    import jax_triton as jt  # lazily: fails to import on CPU-only JAX
  except ImportError as e:
    raise RuntimeError("flash_attention needs jax_triton and a CUDA GPU "
                       f"(import jax_triton failed: {e}).") from e
  out_shape = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape, dtype in outputs]
  return list(jt.triton_call(*operands, kernel=kernel, out_shape=out_shape, grid=grid,
                             num_warps=tiling.num_warps, num_stages=tiling.num_stages, **meta))


_gpu_attention = make_attention(
    functools.partial(fa.forward, _jax_triton_launch),
    lambda q, k, v, out, lse, dout, arrays, cfg: fa.backward(
        _jax_triton_launch, q, k, v, out, lse, dout, arrays, cfg))


def flash_attention(q, k, v, mask: MaskSpec | None = None, scale: float | None = None,
                    softcap: float | None = None, *, fwd: fa.Tiling | None = None,
                    bwd: fa.Tiling | None = None):
  """Fused attention on a GPU via jax_triton. q [B, Sq, HQ, D], k/v [B, Skv, HKV, D].

  Differentiable in q, k, v. Fully masked query rows give output 0 and gradient 0. `fwd` / `bwd`
  override the tiling of each pass (default: DEFAULT_FWD / DEFAULT_BWD fitted to D and dtype).
  """
  cfg, arrays = prepare(q, k, mask, scale, softcap, fwd, bwd)
  return _gpu_attention(q, k, v, arrays, cfg)
