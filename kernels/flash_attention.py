"""FlashAttention-2 style forward and backward kernels written in the Triton language.

Layout: q [B, Sq, HQ, D], k/v [B, Skv, HKV, D], all contiguous; HQ a multiple of HKV (GQA/MQA: query
head h reads kv head h // (HQ // HKV)). D may be any size up to 256: blocks are padded to
BLOCK_D = next_power_of_2(D) with masked loads, so D=80 or 96 needs no copy on the host.

The mask arrives as data (see mmjax.kernels.mask): a per-(batch, query block, key block) int8 tile
map decides per tile whether to skip it (EMPTY: no loads, no math), apply the exact mask
(PARTIAL) or run the maskless fast path (FULL). All three kernels that visit tiles read the same
map; only the traversal order differs. The exact per-element rule lives in one @triton.jit helper,
`_allowed`, so forward and backward cannot disagree about the mask.

Residual: the forward writes lse = logsumexp of the (scaled, capped) logits per query row, float32
[B, HQ, Sq], natural-log units. A fully masked row has no logsumexp; it gets +inf so that the
backward's exp(s - lse) is exactly 0 for it, giving output 0 and gradient 0 without a special case.

This module only defines kernels and the launch recipes (`forward`, `backward`) that fix the
argument order once. Who actually launches them is a parameter: mmjax.kernels.triton_call launches
them through jax_triton on a GPU, mmjax.kernels.interpret runs these same kernels under Triton's
interpreter on numpy arrays.
"""
from __future__ import annotations

import dataclasses

import triton
import triton.language as tl

# Must match mmjax.kernels.mask.TILE_*; redeclared as tl.constexpr so kernels can compare with them.
TILE_EMPTY: tl.constexpr = tl.constexpr(0)
TILE_PARTIAL: tl.constexpr = tl.constexpr(1)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Everything the kernels are specialised on besides shapes and dtypes (hashable: a JAX
  nondiff argument)."""
  scale: float
  softcap: float  # 0.0 means no soft-cap
  causal: bool
  has_prefix: bool
  has_segments: bool
  has_kv_len: bool
  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2


# --------------------------------------------------------------------------------------------
# Device helpers (one source for addressing, logits and masking)
# --------------------------------------------------------------------------------------------

@triton.jit
def _row_ptrs(base, b, h, offs_s, offs_d, S, H: tl.constexpr, D: tl.constexpr):
  """Pointers and bounds mask for rows offs_s of head h in a contiguous [B, S, H, D] array."""
  # int64 batch offset: B * S * H * D overflows int32 for long sequences with large batches.
  ptrs = base + b.to(tl.int64) * S * H * D + offs_s[:, None] * (H * D) + h * D + offs_d[None, :]
  ok = (offs_s[:, None] < S) & (offs_d[None, :] < D)
  return ptrs, ok


@triton.jit
def _logits(q, k, SCALE: tl.constexpr, SOFTCAP: tl.constexpr):
  """Scaled (and soft-capped) q k^T in float32."""
  s = tl.dot(q, tl.trans(k)) * SCALE
  if SOFTCAP > 0:
    # tanh via exp: portable to the interpreter; saturates correctly (exp -> inf gives 1).
    s = SOFTCAP * (1.0 - 2.0 / (tl.exp(2.0 * s / SOFTCAP) + 1.0))
  return s


@triton.jit
def _allowed(b, offs_q, offs_k, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
             IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr, HAS_SEG: tl.constexpr,
             HAS_KVLEN: tl.constexpr):
  """bool [BLOCK_Q, BLOCK_K]: the MaskSpec rule, plus sequence bounds for ragged edge tiles."""
  qi = offs_q[:, None]
  kj = offs_k[None, :]
  ok = (qi < Sq) & (kj < Skv)
  if IS_CAUSAL:
    visible = kj <= qi + tl.load(off_ptr + b)
    if HAS_PREFIX:
      visible = visible | (kj < tl.load(prefix_ptr + b))
    ok = ok & visible
  if HAS_SEG:
    qs = tl.load(qseg_ptr + b.to(tl.int64) * Sq + offs_q, mask=offs_q < Sq, other=-1)
    ks = tl.load(kseg_ptr + b.to(tl.int64) * Skv + offs_k, mask=offs_k < Skv, other=-1)
    ok = ok & (qs[:, None] == ks[None, :])
  if HAS_KVLEN:
    ok = ok & (kj < tl.load(kvlen_ptr + b))
  return ok


@triton.jit
def _probs_and_dlogits(q, k, v, do, lse, delta, tile, b, offs_q, offs_k, Sq, Skv,
                       off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                       SCALE: tl.constexpr, SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr,
                       HAS_PREFIX: tl.constexpr, HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr):
  """Backward tile math shared by the dK/dV and dQ kernels.

  Returns P (recomputed from lse) and dS w.r.t. the scaled q k^T, i.e. before the 1/SCALE chain
  factor, which the callers apply once to the accumulated dK / dQ.
  """
  s = _logits(q, k, SCALE, SOFTCAP)
  # lse = +inf for fully masked rows, so p is exactly 0 there.
  p = tl.exp2((s - lse[:, None]) * LOG2E)
  if tile == TILE_PARTIAL:
    ok = _allowed(b, offs_q, offs_k, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                  IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
    p = tl.where(ok, p, 0.0)
  dp = tl.dot(do, tl.trans(v)).to(tl.float32)
  ds = p * (dp - delta[:, None])
  if SOFTCAP > 0:
    # d/dx [c tanh(x / c)] = 1 - tanh^2 = 1 - (s / c)^2.
    t = s / SOFTCAP
    ds = ds * (1.0 - t * t)
  return p, ds


# --------------------------------------------------------------------------------------------
# Kernels. Argument order: input pointers, runtime ints, output pointers, constexprs (the order
# jax_triton requires: outputs follow every positional operand).
# --------------------------------------------------------------------------------------------

@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, tiles_ptr, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                Sq, Skv,
                o_ptr, lse_ptr,
                HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
  qb = tl.program_id(0)
  bh = tl.program_id(1)
  b = bh // HQ
  h = bh % HQ
  hk = h // (HQ // HKV)
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  offs_d = tl.arange(0, BLOCK_D)
  nqb = tl.cdiv(Sq, BLOCK_Q)
  nkb = tl.cdiv(Skv, BLOCK_K)
  q_ptrs, q_ok = _row_ptrs(q_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  q = tl.load(q_ptrs, mask=q_ok, other=0.0)

  m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
  l = tl.zeros([BLOCK_Q], tl.float32)
  acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
  tile_row = tiles_ptr + (b.to(tl.int64) * nqb + qb) * nkb
  for kb in range(0, nkb):
    tile = tl.load(tile_row + kb)
    if tile != TILE_EMPTY:
      offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
      k_ptrs, k_ok = _row_ptrs(k_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
      v_ptrs, _ = _row_ptrs(v_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
      k = tl.load(k_ptrs, mask=k_ok, other=0.0)
      v = tl.load(v_ptrs, mask=k_ok, other=0.0)
      s = _logits(q, k, SCALE, SOFTCAP)
      if tile == TILE_PARTIAL:
        ok = _allowed(b, offs_q, offs_k, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr,
                      kvlen_ptr, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
        s = tl.where(ok, s, float("-inf"))
      m_new = tl.maximum(m, tl.max(s, 1))
      # A row with nothing allowed so far has m_new = -inf; subtracting it would give NaN.
      m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
      p = tl.exp2((s - m_safe[:, None]) * LOG2E)
      alpha = tl.exp2((m - m_safe) * LOG2E)
      l = l * alpha + tl.sum(p, 1)
      acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v).to(tl.float32)
      m = m_new

  empty_row = l == 0.0
  out = acc / tl.where(empty_row, 1.0, l)[:, None]
  o_ptrs, _ = _row_ptrs(o_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_ok)
  lse = tl.where(empty_row, float("inf"), m + tl.log(tl.where(empty_row, 1.0, l)))
  tl.store(lse_ptr + bh.to(tl.int64) * Sq + offs_q, lse, mask=offs_q < Sq)


@triton.jit
def _bwd_delta_kernel(o_ptr, do_ptr, Sq, delta_ptr,
                      HQ: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr,
                      BLOCK_D: tl.constexpr):
  """delta = rowsum(dO * O): the softmax-Jacobian term shared by every key block of a row."""
  qb = tl.program_id(0)
  bh = tl.program_id(1)
  b = bh // HQ
  h = bh % HQ
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  offs_d = tl.arange(0, BLOCK_D)
  o_ptrs, ok = _row_ptrs(o_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  do_ptrs, _ = _row_ptrs(do_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  o = tl.load(o_ptrs, mask=ok, other=0.0).to(tl.float32)
  do = tl.load(do_ptrs, mask=ok, other=0.0).to(tl.float32)
  tl.store(delta_ptr + bh.to(tl.int64) * Sq + offs_q, tl.sum(o * do, 1), mask=offs_q < Sq)


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, tiles_ptr, off_ptr,
                     prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                     Sq, Skv,
                     dk_ptr, dv_ptr,
                     HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                     SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                     HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
  """One program per (key block, batch, kv head): walks a column of the tile map, and for GQA all
  query heads of the group, so dK/dV are summed over the group without atomics."""
  kb = tl.program_id(0)
  bhk = tl.program_id(1)
  b = bhk // HKV
  hk = bhk % HKV
  GROUP: tl.constexpr = HQ // HKV
  offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
  offs_d = tl.arange(0, BLOCK_D)
  nqb = tl.cdiv(Sq, BLOCK_Q)
  nkb = tl.cdiv(Skv, BLOCK_K)
  k_ptrs, k_ok = _row_ptrs(k_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  v_ptrs, _ = _row_ptrs(v_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  k = tl.load(k_ptrs, mask=k_ok, other=0.0)
  v = tl.load(v_ptrs, mask=k_ok, other=0.0)
  dk = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
  dv = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
  tile_col = tiles_ptr + b.to(tl.int64) * nqb * nkb + kb
  for g in range(0, GROUP):
    h = hk * GROUP + g
    row_base = (b * HQ + h).to(tl.int64) * Sq
    for qb in range(0, nqb):
      tile = tl.load(tile_col + qb * nkb)
      if tile != TILE_EMPTY:
        offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
        q_ptrs, q_ok = _row_ptrs(q_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
        do_ptrs, _ = _row_ptrs(do_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
        q = tl.load(q_ptrs, mask=q_ok, other=0.0)
        do = tl.load(do_ptrs, mask=q_ok, other=0.0)
        lse = tl.load(lse_ptr + row_base + offs_q, mask=offs_q < Sq, other=float("inf"))
        delta = tl.load(delta_ptr + row_base + offs_q, mask=offs_q < Sq, other=0.0)
        p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, tile, b, offs_q, offs_k, Sq, Skv,
                                   off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr, SCALE,
                                   SOFTCAP, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do).to(tl.float32)
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q).to(tl.float32)
  dk_ptrs, _ = _row_ptrs(dk_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  dv_ptrs, _ = _row_ptrs(dv_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  tl.store(dk_ptrs, (dk * SCALE).to(dk_ptr.dtype.element_ty), mask=k_ok)
  tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=k_ok)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, tiles_ptr, off_ptr,
                   prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                   Sq, Skv,
                   dq_ptr,
                   HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                   SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                   HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
  qb = tl.program_id(0)
  bh = tl.program_id(1)
  b = bh // HQ
  h = bh % HQ
  hk = h // (HQ // HKV)
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  offs_d = tl.arange(0, BLOCK_D)
  nqb = tl.cdiv(Sq, BLOCK_Q)
  nkb = tl.cdiv(Skv, BLOCK_K)
  q_ptrs, q_ok = _row_ptrs(q_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  do_ptrs, _ = _row_ptrs(do_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  q = tl.load(q_ptrs, mask=q_ok, other=0.0)
  do = tl.load(do_ptrs, mask=q_ok, other=0.0)
  lse = tl.load(lse_ptr + bh.to(tl.int64) * Sq + offs_q, mask=offs_q < Sq, other=float("inf"))
  delta = tl.load(delta_ptr + bh.to(tl.int64) * Sq + offs_q, mask=offs_q < Sq, other=0.0)
  dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
  tile_row = tiles_ptr + (b.to(tl.int64) * nqb + qb) * nkb
  for kb in range(0, nkb):
    tile = tl.load(tile_row + kb)
    if tile != TILE_EMPTY:
      offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
      k_ptrs, k_ok = _row_ptrs(k_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
      v_ptrs, _ = _row_ptrs(v_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
      k = tl.load(k_ptrs, mask=k_ok, other=0.0)
      v = tl.load(v_ptrs, mask=k_ok, other=0.0)
      p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, tile, b, offs_q, offs_k, Sq, Skv,
                                 off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr, SCALE,
                                 SOFTCAP, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
      dq += tl.dot(ds.to(k.dtype), k).to(tl.float32)
  dq_ptrs, _ = _row_ptrs(dq_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  tl.store(dq_ptrs, (dq * SCALE).to(dq_ptr.dtype.element_ty), mask=q_ok)


# --------------------------------------------------------------------------------------------
# Launch recipes. `launch(kernel, grid, operands, outputs, meta, cfg)` is supplied by the caller:
# operands are arrays and ints in kernel order, outputs are (shape, dtype) pairs appended after
# them, meta are constexprs. Returns the outputs.
# --------------------------------------------------------------------------------------------

def _meta(q, k, cfg: KernelConfig) -> dict:
  d = q.shape[3]
  return dict(HQ=q.shape[2], HKV=k.shape[2], D=d, SCALE=float(cfg.scale),
              SOFTCAP=float(cfg.softcap), IS_CAUSAL=cfg.causal, HAS_PREFIX=cfg.has_prefix,
              HAS_SEG=cfg.has_segments, HAS_KVLEN=cfg.has_kv_len, BLOCK_Q=cfg.block_q,
              BLOCK_K=cfg.block_k, BLOCK_D=max(16, triton.next_power_of_2(d)))


def check_shapes(q, k, v, cfg: KernelConfig) -> None:
  """Raises ValueError for what the kernels do not handle (callers turn it into their error)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[2] % k.shape[2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"flash_attention: bad shapes q{q.shape} k{k.shape} v{v.shape}.")
  if not 16 <= q.shape[3] <= 256:
    raise ValueError(f"flash_attention: head dim {q.shape[3]} outside the supported 16..256.")
  for name, blk in (("block_q", cfg.block_q), ("block_k", cfg.block_k)):
    if blk < 16 or blk & (blk - 1):
      raise ValueError(f"flash_attention: {name}={blk} must be a power of two >= 16 (tl.dot).")


def forward(launch, q, k, v, mask_arrays, cfg: KernelConfig):
  """Returns (out [B, Sq, HQ, D] in q.dtype, lse float32 [B, HQ, Sq])."""
  b, sq, hq, d = q.shape
  grid = (triton.cdiv(sq, cfg.block_q), b * hq)
  return launch(_fwd_kernel, grid, [q, k, v, *mask_arrays, sq, k.shape[1]],
                [(q.shape, q.dtype), ((b, hq, sq), "float32")], _meta(q, k, cfg), cfg)


def backward(launch, q, k, v, out, lse, dout, mask_arrays, cfg: KernelConfig):
  """Returns (dq, dk, dv) in the dtypes of q, k, v."""
  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  meta = _meta(q, k, cfg)
  (delta,) = launch(_bwd_delta_kernel, (triton.cdiv(sq, cfg.block_q), b * hq), [out, dout, sq],
                    [((b, hq, sq), "float32")],
                    dict(HQ=hq, D=d, BLOCK_Q=cfg.block_q, BLOCK_D=meta["BLOCK_D"]), cfg)
  operands = [q, k, v, dout, lse, delta, *mask_arrays, sq, skv]
  dk, dv = launch(_bwd_dkdv_kernel, (triton.cdiv(skv, cfg.block_k), b * hkv), operands,
                  [(k.shape, k.dtype), (v.shape, v.dtype)], meta, cfg)
  (dq,) = launch(_bwd_dq_kernel, (triton.cdiv(sq, cfg.block_q), b * hq), operands,
                 [(q.shape, q.dtype)], meta, cfg)
  return dq, dk, dv
