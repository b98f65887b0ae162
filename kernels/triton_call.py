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
import os
import re

import jax
import jax.numpy as jnp

from mmjax.kernels import flash_attention as fa
from mmjax.kernels.mask import MaskSpec, heaviest_first, tile_map, tile_runs

# Shared memory the kernels may plan for per program (H100: 227 KiB; leave room for the
# compiler's own buffers and the A100's 163 KiB).
SHARED_MEMORY_BUDGET = 160 * 1024

KERNELS = ("fwd", "dkdv", "dq")

# Default tilings per kernel for 16-bit inputs, by padded head dim (the first row whose bound is >=
# fa.block_d(D)); float32 inputs take the same rows fitted to the shared-memory budget (fit_tiling).
# NOT measured on a GPU yet: chosen on a CPU among the tilings that compile for sm_90 with every
# tl.dot on wgmma and without register spills, also with every mask term and the soft-cap on
# (tests/test_triton_compile.py checks every default; kernels/BENCHMARKS.md gives the numbers and
# what remains to be timed). The forward's 64x64w4s3 is the tiling measured as the best forward on
# an H100 (kernels/BENCHMARKS.md, run 2). dK/dV: BLOCK_K (the M side of its products) is 128 up to
# D=128, which halves the atomic dQ traffic of 64; at D <= 32 it is 64x64, since the atomic dQ
# product needs 64 on one side (BLOCK_Q or the head dim); at D=256 no wgmma tiling of it is
# spill-free (dK and dV alone take 128 registers per thread at 8 warps) and 16x64w8s2 spills least.
DEFAULT_TILINGS = {
  "fwd": ((128, fa.Tiling(64, 64, num_warps=4, num_stages=3)), (256, fa.Tiling(128, 32, num_warps=8, num_stages=2))),
  "dkdv": (
    (32, fa.Tiling(64, 64, num_warps=4, num_stages=2)),
    (64, fa.Tiling(32, 128, num_warps=8, num_stages=2)),
    (128, fa.Tiling(16, 128, num_warps=8, num_stages=2)),
    (256, fa.Tiling(16, 64, num_warps=8, num_stages=2)),
  ),
  "dq": ((128, fa.Tiling(128, 64, num_warps=8, num_stages=2)), (256, fa.Tiling(64, 32, num_warps=8, num_stages=2))),
}


def shared_memory_estimate(kernel: str, tiling: fa.Tiling, head_dim: int, itemsize: int) -> int:
  """Bytes of shared memory a program of `kernel` needs: an upper bound of what Triton 3.9
  allocates for sm_90 (tests/test_triton_compile.py checks it against every compiled default). It
  counts num_stages buffers of the two tiles the loop streams, the tiles kept for the whole
  program (twice for float32: the TF32x3 products keep a high and a low part of them), the int32
  segment ids of the kept rows and of each stage's streamed rows, and for the dK/dV kernel the lse
  and delta vectors per stage plus, for its atomic form (budgeted always: one tiling serves both
  forms), K^T and dS^T staged for the dQ product."""
  row = fa.block_d(head_dim) * itemsize
  f = 2 if itemsize == 4 else 1
  bq, bk, stages = tiling.block_q, tiling.block_k, tiling.num_stages
  if kernel == "fwd":  # keeps Q; streams K, V
    return (f * bq + 2 * stages * bk) * row + 4 * (bq + stages * bk)
  if kernel == "dq":  # keeps Q, dO; streams K, V
    return (2 * f * bq + 2 * stages * bk) * row + 4 * (bq + stages * bk)
  if kernel == "dkdv":  # keeps K, V; streams Q, dO
    kept_and_streamed = (2 * f * bk + 2 * stages * bq) * row + 4 * (bk + stages * bq) + 8 * bq * stages
    return kept_and_streamed + f * (bk * row + 4 * bk * bq * itemsize)
  raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}.")


def fit_tiling(tiling: fa.Tiling, head_dim: int, itemsize: int, kernel: str = "fwd") -> fa.Tiling:
  """`tiling` with its blocks halved until shared_memory_estimate fits SHARED_MEMORY_BUDGET: the
  streamed block first, down to 16 (each of its halvings frees num_stages buffers), then the kept
  one, which is the M side of the kernel's main products (wgmma wants >= 64 there). Without this,
  large head dims in float32 ask for more shared memory than any GPU has (forward D=128: 295 KB
  asked of the H100's 227 KB)."""
  streamed = "block_q" if kernel == "dkdv" else "block_k"
  kept = "block_k" if kernel == "dkdv" else "block_q"
  t = tiling
  while shared_memory_estimate(kernel, t, head_dim, itemsize) > SHARED_MEMORY_BUDGET:
    name = streamed if getattr(t, streamed) > 16 else kept
    if getattr(t, name) <= 16:
      break
    t = dataclasses.replace(t, **{name: getattr(t, name) // 2})
  return t


def default_tilings(head_dim: int, dtype) -> dict[str, fa.Tiling]:
  """{kernel: Tiling} used when the caller gives none: the DEFAULT_TILINGS row of the padded head
  dim, fitted to the dtype's shared memory."""
  itemsize = jnp.dtype(dtype).itemsize
  bd = fa.block_d(head_dim)
  return {
    name: fit_tiling(next(t for bound, t in DEFAULT_TILINGS[name] if bd <= bound), head_dim, itemsize, name)
    for name in KERNELS
  }


def default_deterministic() -> bool:
  """The backward form used when the caller does not choose: the atomic one (5 matmuls per tile
  pair instead of 7; FlashAttention-2/3 and cuDNN's default), unless XLA_FLAGS asks for
  deterministic GPU ops (--xla_gpu_deterministic_ops=true), which a user sets to get bitwise
  reproducible results from everything else."""
  flags = os.environ.get("XLA_FLAGS", "")
  return re.search(r"--xla_gpu_deterministic_ops(=(true|1))?(\s|$)", flags, re.IGNORECASE) is not None


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _loop_arrays(mask: MaskSpec, b: int, sq: int, skv: int, block_q: int, block_k: int):
  """(row runs, row order, column runs, column order) of one tiling. Jitted: outside a jit (the
  interpreter tests, CPU tooling) the dozens of small ops would otherwise each compile on their own."""
  rows, cols = tile_runs(tile_map(mask, b, sq, skv, block_q, block_k))
  return rows, heaviest_first(rows), cols, heaviest_first(cols)


def prepare(
  q,
  k,
  mask: MaskSpec | None,
  scale,
  softcap,
  fwd: fa.Tiling | None = None,
  dkdv: fa.Tiling | None = None,
  dq: fa.Tiling | None = None,
  deterministic: bool | None = None,
):
  """Turns (mask, scale, softcap, tilings, backward form) into the kernels' static config and mask
  operands. A tiling left as None is the default one (default_tilings); deterministic=None is
  default_deterministic().

  Returns (cfg, fa.MaskArrays): the loop bounds and launch order of each kernel's tiling, then the
  MaskSpec's fields as int32 arrays. Absent fields become a 1-element dummy because a kernel
  pointer argument cannot be omitted (its constexpr HAS_* flag keeps it unread).
  """
  mask = mask if mask is not None else MaskSpec()
  defaults = default_tilings(q.shape[-1], q.dtype)
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  cfg = fa.KernelConfig(
    scale=float(1.0 / math.sqrt(q.shape[-1]) if scale is None else scale),
    softcap=float(softcap or 0.0),
    causal=mask.causal,
    has_prefix=mask.prefix_len is not None,
    has_segments=mask.q_segment_ids is not None,
    has_kv_len=mask.kv_valid_len is not None,
    fwd=fwd or defaults["fwd"],
    dkdv=dkdv or defaults["dkdv"],
    dq=dq or defaults["dq"],
    deterministic=default_deterministic() if deterministic is None else bool(deterministic),
  )
  fa.check_shapes(q, k, k, cfg)
  dummy = jnp.zeros((1,), jnp.int32)

  def as_i32(x, shape):
    return dummy if x is None else jnp.broadcast_to(jnp.asarray(x, jnp.int32), shape)

  runs = {}  # one tile map per distinct block shape; rows and columns come from the same map

  def loop_arrays(t: fa.Tiling, columns: bool):
    if (t.block_q, t.block_k) not in runs:
      runs[t.block_q, t.block_k] = _loop_arrays(mask, b, sq, skv, t.block_q, t.block_k)
    return runs[t.block_q, t.block_k][2:] if columns else runs[t.block_q, t.block_k][:2]

  offset = jnp.zeros((b,), jnp.int32) if mask.causal_offset is None else as_i32(mask.causal_offset, (b,))
  arrays = fa.MaskArrays(
    *loop_arrays(cfg.fwd, False),
    *loop_arrays(cfg.dkdv, True),
    *loop_arrays(cfg.dq, False),
    offset,
    as_i32(mask.prefix_len, (b,)),
    as_i32(mask.q_segment_ids, (b, sq)),
    as_i32(mask.kv_segment_ids, (b, skv)),
    as_i32(mask.kv_valid_len, (b,)),
  )
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


def _jax_triton_launch(kernel, grid, operands, outputs, meta, tiling: fa.Tiling, zeroed=()):
  try:
    import jax_triton as jt  # lazily: fails to import on CPU-only JAX
  except ImportError as e:
    raise RuntimeError(f"flash_attention needs jax_triton and a CUDA GPU (import jax_triton failed: {e}).") from e
  out_shape = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape, dtype in outputs]
  return list(
    jt.triton_call(
      *operands,
      kernel=kernel,
      out_shape=out_shape,
      grid=grid,
      num_warps=tiling.num_warps,
      num_stages=tiling.num_stages,
      zeroed_outputs=tuple(zeroed),
      **meta,
    )
  )


_gpu_attention = make_attention(
  functools.partial(fa.forward, _jax_triton_launch),
  lambda q, k, v, out, lse, dout, arrays, cfg: fa.backward(_jax_triton_launch, q, k, v, out, lse, dout, arrays, cfg),
)


def backward_tilings(bwd: fa.Tiling | None, dkdv: fa.Tiling | None, dq: fa.Tiling | None):
  """(dkdv, dq) from the keyword options: `bwd` is shorthand for one tiling of both."""
  if bwd is not None and (dkdv is not None or dq is not None):
    raise ValueError("flash_attention: give bwd (both backward kernels) or dkdv / dq, not both.")
  return (bwd, bwd) if bwd is not None else (dkdv, dq)


def flash_attention(
  q,
  k,
  v,
  mask: MaskSpec | None = None,
  scale: float | None = None,
  softcap: float | None = None,
  *,
  fwd: fa.Tiling | None = None,
  bwd: fa.Tiling | None = None,
  dkdv: fa.Tiling | None = None,
  dq: fa.Tiling | None = None,
  deterministic: bool | None = None,
):
  """Fused attention on a GPU via jax_triton. q [B, Sq, HQ, D], k/v [B, Skv, HKV, D].

  Differentiable in q, k, v. Fully masked query rows give output 0 and gradient 0.
  fwd / dkdv / dq override the tiling of each kernel (bwd: one tiling for both backward kernels;
  default: default_tilings). deterministic=True runs the two-kernel backward without atomics
  (bitwise reproducible, 7 matmuls per tile pair); False the atomic-dQ backward (5 matmuls);
  None (default) picks default_deterministic(): atomic unless XLA_FLAGS sets
  --xla_gpu_deterministic_ops=true.
  """
  dkdv, dq = backward_tilings(bwd, dkdv, dq)
  cfg, arrays = prepare(q, k, mask, scale, softcap, fwd, dkdv, dq, deterministic)
  return _gpu_attention(q, k, v, arrays, cfg)
