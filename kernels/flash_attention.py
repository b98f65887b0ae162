"""FlashAttention-2 style forward and backward kernels written in the Triton language.

Layout: q [B, Sq, HQ, D], k/v [B, Skv, HKV, D], all contiguous; HQ a multiple of HKV (GQA/MQA: query
head h reads kv head h // (HQ // HKV)). D may be any size up to 256: blocks are padded to
BLOCK_D = next_power_of_2(D) with masked loads, so D=80 or 96 needs no copy on the host.

Passes and launches. The forward is one kernel, one program per (query block, batch, query head).
The backward has two forms that share their tile math (`_probs_dlogits`) and their dK/dV kernel:
- atomic (the default): a tiny pre-pass computes delta = rowsum(O * dO); then one program per
  (key block, batch, kv head) computes dK and dV for its keys and adds each tile's dQ share into a
  float32 buffer with relaxed atomics: 5 matmuls per tile pair, as in FlashAttention-2/3. The order
  of the float additions varies from run to run, so dQ is not bitwise reproducible.
- deterministic: the dQ kernel runs first (one program per query block, computing delta for its
  rows on the way: the first launch needs no pre-pass) and the dK/dV kernel second, without
  atomics; the dQ kernel recomputes Q K^T and dO V^T, so 7 matmuls per tile pair.
The dK/dV kernel works on transposed tiles (S^T = K Q^T, dP^T = V dO^T, dV += P^T dO,
dK += dS^T Q), so neither P nor dS is transposed on the way to dV and dK; only the atomic form's
dQ product reads dS^T a second time (as dQ^T = K^T dS^T, through shared memory, like FA3's dQ).

The mask arrives as data (see mmjax.kernels.mask): for each query-block row (and key-block column)
of the per-tile map, `tile_runs` gives four block indices (first, run_start, run_end, last + 1):
the span of non-EMPTY tiles and its longest run of FULL tiles. A program loops over the span only,
in three loops: a masked head [first, run_start), the FULL run [run_start, run_end) with no mask
arithmetic, no bounds checks and no per-tile class load or branch, and a masked tail
[run_end, last + 1). Tiles outside the span cost nothing; EMPTY tiles inside the head or tail are
masked like PARTIAL ones. For the masks that matter (causal, prefix-LM, padding, sorted segment
ids such as Flamingo's media-local mask) every row's non-EMPTY tiles and FULL tiles are contiguous,
so the head and tail hold only the few PARTIAL tiles (causal: the diagonal). The loops have
unconditional loads, which Triton's software pipeliner (num_stages) prefetches. The exact
per-element rule lives in one @triton.jit helper, `_allowed`, so every kernel applies the same mask.

Launch order: programs are numbered on grid axis 0 alone (axes 1 and 2 are limited to 65,535) with
the heads varying fastest and the blocks in an order given as data, heaviest first
(mask.heaviest_first): the long causal rows start first and the short ones fill the tail.

Residual: the forward writes lse = logsumexp of the (scaled, capped) logits per query row, float32
[B, HQ, Sq], natural-log units. A fully masked row has no logsumexp; it gets +inf so that the
backward's exp(s - lse) is exactly 0 for it, giving output 0 and gradient 0 without a special case.

Offsets: a pointer is a per-head base (int64 scalar arithmetic, since B*S*H*D can pass 2^31) plus
an int32 in-tile offset (at most BLOCK * H * D), so no int64 vector arithmetic is needed.

This module only defines kernels and the launch recipes (`forward`, `backward`) that fix the
argument order once. Who actually launches them is a parameter: mmjax.kernels.triton_call launches
them through jax_triton on a GPU, mmjax.kernels.interpret runs these same kernels under Triton's
interpreter on numpy arrays, and mmjax.kernels.compile_check compiles them for sm_90 on a CPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import triton
import triton.language as tl

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How one kernel (the forward, the backward's dK/dV or dQ kernel) is cut into programs: each
  program holds block_q query rows and block_k key rows at a time."""

  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __str__(self):
    return f"{self.block_q}x{self.block_k}w{self.num_warps}s{self.num_stages}"


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Everything the kernels are specialised on besides shapes and dtypes (hashable: a JAX
  nondiff argument). Each kernel has its own tiling: the dK/dV kernel holds K, V and two
  accumulators per program and streams Q and dO, the forward and dQ kernels the other way round,
  so their best blocks differ. `dq` is only used by the deterministic backward."""

  scale: float
  softcap: float  # 0.0 means no soft-cap
  causal: bool
  has_prefix: bool
  has_segments: bool
  has_kv_len: bool
  fwd: Tiling = Tiling()
  dkdv: Tiling = Tiling()
  dq: Tiling = Tiling()
  deterministic: bool = False


class MaskArrays(NamedTuple):
  """The kernels' mask operands (see mmjax.kernels.triton_call.prepare). *_runs: int32 [B, n, 4]
  loop bounds per query-block row (fwd, dq) or key-block column (dkdv) of that kernel's tiling
  (mask.tile_runs); *_order: int32 [n], the blocks heaviest first (mask.heaviest_first). The rest
  is the MaskSpec's data; absent fields are a 1-element dummy that the kernel never reads."""

  fwd_runs: Any
  fwd_order: Any
  dkdv_runs: Any
  dkdv_order: Any
  dq_runs: Any
  dq_order: Any
  causal_offset: Any
  prefix_len: Any
  q_segment_ids: Any
  kv_segment_ids: Any
  kv_valid_len: Any

  def spec_operands(self) -> list:
    return [self.causal_offset, self.prefix_len, self.q_segment_ids, self.kv_segment_ids, self.kv_valid_len]


# --------------------------------------------------------------------------------------------
# Device helpers (one source for addressing, logits and masking). Arguments travel in groups:
#   mask = (b, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr)  the MaskSpec's data
#   MASK = (IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)                         which terms apply
#   MATH = (SCALE, SOFTCAP)                                                    the logits' math
# --------------------------------------------------------------------------------------------


@triton.jit
def _head(base, b, h, S, H: tl.constexpr, D: tl.constexpr):
  """Pointer to row 0 of head h of batch b in a contiguous [B, S, H, D] array (int64 offset)."""
  return base + (b.to(tl.int64) * S * (H * D) + h * D)


@triton.jit
def _rows(head, start, H: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
  """[BLOCK, BLOCK_D] pointers to rows start.. of the head at `head`: an int64 scalar row offset
  plus an int32 in-tile offset."""
  rows = tl.arange(0, BLOCK)[:, None] * (H * D) + tl.arange(0, BLOCK_D)[None, :]
  return (head + start.to(tl.int64) * (H * D)) + rows


@triton.jit
def _io_mask(offs_s, S, D: tl.constexpr, BLOCK_D: tl.constexpr):
  return (offs_s[:, None] < S) & (tl.arange(0, BLOCK_D)[None, :] < D)


@triton.jit
def _load_rows(ptrs, offs_s, S, D: tl.constexpr, BLOCK_D: tl.constexpr, CHECK_ROWS: tl.constexpr):
  """A tile whose rows past S (only checked when CHECK_ROWS) and head-dim padding past D read as
  0. Tiles of a FULL run are in bounds (a ragged last block is never FULL), so they skip the row
  check, and the whole mask when D is a power of two."""
  if CHECK_ROWS:
    x = tl.load(ptrs, mask=_io_mask(offs_s, S, D, BLOCK_D), other=0.0)
  elif D == BLOCK_D:
    x = tl.load(ptrs)
  else:
    x = tl.load(ptrs, mask=tl.arange(0, BLOCK_D)[None, :] < D, other=0.0)
  return x


@triton.jit
def _load_vec(ptr, offs, S, other, CHECK_ROWS: tl.constexpr):
  if CHECK_ROWS:
    x = tl.load(ptr + offs, mask=offs < S, other=other)
  else:
    x = tl.load(ptr + offs)
  return x


@triton.jit
def _query_axis(x, KEYS_ON_ROWS: tl.constexpr):
  """A per-query vector broadcast along the tile's query axis: columns when the tile is
  [keys, queries] (the dK/dV kernel's transposed tiles), rows otherwise."""
  if KEYS_ON_ROWS:
    y = x[None, :]
  else:
    y = x[:, None]
  return y


@triton.jit
def _key_axis(x, KEYS_ON_ROWS: tl.constexpr):
  if KEYS_ON_ROWS:
    y = x[:, None]
  else:
    y = x[None, :]
  return y


@triton.jit
def _allowed(offs_q, offs_k, mask, MASK: tl.constexpr, KEYS_ON_ROWS: tl.constexpr):
  """bool tile, [BLOCK_Q, BLOCK_K] or (KEYS_ON_ROWS) [BLOCK_K, BLOCK_Q]: the MaskSpec rule, plus
  sequence bounds for ragged edge tiles."""
  b, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr = mask
  IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN = MASK
  qi = _query_axis(offs_q, KEYS_ON_ROWS)
  kj = _key_axis(offs_k, KEYS_ON_ROWS)
  ok = (qi < Sq) & (kj < Skv)
  if IS_CAUSAL:
    visible = kj <= qi + tl.load(off_ptr + b)
    if HAS_PREFIX:
      visible = visible | (kj < tl.load(prefix_ptr + b))
    ok = ok & visible
  if HAS_SEG:
    qs = tl.load(qseg_ptr + b.to(tl.int64) * Sq + offs_q, mask=offs_q < Sq, other=-1)
    ks = tl.load(kseg_ptr + b.to(tl.int64) * Skv + offs_k, mask=offs_k < Skv, other=-1)
    ok = ok & (_query_axis(qs, KEYS_ON_ROWS) == _key_axis(ks, KEYS_ON_ROWS))
  if HAS_KVLEN:
    ok = ok & (kj < tl.load(kvlen_ptr + b))
  return ok


@triton.jit
def _logits2(qk, MATH: tl.constexpr):
  """(s, c) from the raw q.k products, with s * c the logit in base-2 units (times log2 e), so that
  each exp2 of a softmax is of `s * c - offset`: one FMA per logit, the scale folded into it. No
  soft-cap: s is qk itself and c = SCALE * log2 e. Soft-cap: s = SOFTCAP * tanh(SCALE * qk / SOFTCAP)
  in base-2 units and c = 1; tanh via exp, portable to the interpreter and saturating correctly
  (exp -> inf gives 1)."""
  SCALE, SOFTCAP = MATH
  if SOFTCAP > 0:
    s = (SOFTCAP * LOG2E) * (1.0 - 2.0 / (tl.exp((2.0 * SCALE / SOFTCAP) * qk) + 1.0))
    c = 1.0
  else:
    s = qk
    c = SCALE * LOG2E
  return s, c


@triton.jit
def _program(order_ptr, BH, H: tl.constexpr):
  """(block, batch, head) of this program: heads vary fastest, blocks come in `order` (heaviest
  first). One grid axis, so B * H * blocks may reach 2^31 - 1."""
  pid = tl.program_id(0)
  bh = pid % BH
  return tl.load(order_ptr + pid // BH), bh // H, bh % H


@triton.jit
def _runs(runs_ptr, b, blk, nblocks):
  """(first, run_start, run_end, last + 1) of this row or column (mask.tile_runs)."""
  p = runs_ptr + (b.to(tl.int64) * nblocks + blk) * 4
  return tl.load(p), tl.load(p + 1), tl.load(p + 2), tl.load(p + 3)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@triton.jit
def _fwd_range(
  acc,
  m,
  l,
  q,
  kv_heads,
  lo,
  hi,
  offs_q,
  mask,
  MASK: tl.constexpr,
  MATH: tl.constexpr,
  PRECISION: tl.constexpr,
  MASKED: tl.constexpr,
  HKV: tl.constexpr,
  D: tl.constexpr,
  BLOCK_K: tl.constexpr,
  BLOCK_D: tl.constexpr,
):
  """Online softmax over key blocks [lo, hi); m is the running row max in base-2 units."""
  k_head, v_head = kv_heads
  Skv = mask[2]
  for kb in range(lo, hi):
    start = kb * BLOCK_K
    offs_k = start + tl.arange(0, BLOCK_K)
    k = _load_rows(_rows(k_head, start, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, MASKED)
    v = _load_rows(_rows(v_head, start, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, MASKED)
    s, c = _logits2(tl.dot(q, tl.trans(k), input_precision=PRECISION), MATH)
    if MASKED:
      s = tl.where(_allowed(offs_q, offs_k, mask, MASK, False), s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1) * c)
    if MASKED:
      # A row with nothing allowed so far has m_new = -inf; subtracting it would give NaN. In a
      # FULL run every row has allowed keys, so m_new is finite there.
      m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s * c - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    m = m_new
  return acc, m, l


@triton.jit
def _fwd_kernel(
  q_ptr,
  k_ptr,
  v_ptr,
  runs_ptr,
  order_ptr,
  off_ptr,
  prefix_ptr,
  qseg_ptr,
  kseg_ptr,
  kvlen_ptr,
  B,
  Sq,
  Skv,
  o_ptr,
  lse_ptr,
  HQ: tl.constexpr,
  HKV: tl.constexpr,
  D: tl.constexpr,
  SCALE: tl.constexpr,
  SOFTCAP: tl.constexpr,
  IS_CAUSAL: tl.constexpr,
  HAS_PREFIX: tl.constexpr,
  HAS_SEG: tl.constexpr,
  HAS_KVLEN: tl.constexpr,
  BLOCK_Q: tl.constexpr,
  BLOCK_K: tl.constexpr,
  BLOCK_D: tl.constexpr,
  PRECISION: tl.constexpr,
):
  qb, b, h = _program(order_ptr, B * HQ, HQ)
  hk = h // (HQ // HKV)
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  q = _load_rows(
    _rows(_head(q_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  kv_heads = (_head(k_ptr, b, hk, Skv, HKV, D), _head(v_ptr, b, hk, Skv, HKV, D))
  lo, run_lo, run_hi, hi = _runs(runs_ptr, b, qb, tl.cdiv(Sq, BLOCK_Q))
  mask = (b, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr)
  MASK = (IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
  MATH = (SCALE, SOFTCAP)

  m = tl.full([BLOCK_Q], float("-inf"), tl.float32)
  l = tl.zeros([BLOCK_Q], tl.float32)
  acc = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
  acc, m, l = _fwd_range(
    acc, m, l, q, kv_heads, lo, run_lo, offs_q, mask, MASK, MATH, PRECISION, True, HKV, D, BLOCK_K, BLOCK_D
  )
  acc, m, l = _fwd_range(
    acc, m, l, q, kv_heads, run_lo, run_hi, offs_q, mask, MASK, MATH, PRECISION, False, HKV, D, BLOCK_K, BLOCK_D
  )
  acc, m, l = _fwd_range(
    acc, m, l, q, kv_heads, run_hi, hi, offs_q, mask, MASK, MATH, PRECISION, True, HKV, D, BLOCK_K, BLOCK_D
  )

  empty_row = l == 0.0
  out = acc / tl.where(empty_row, 1.0, l)[:, None]
  o_ptrs = _rows(_head(o_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D)
  tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=_io_mask(offs_q, Sq, D, BLOCK_D))
  # m is in base-2 units; the residual lse is in natural-log units.
  lse = tl.where(empty_row, float("inf"), m / LOG2E + tl.log(tl.where(empty_row, 1.0, l)))
  tl.store(lse_ptr + (b * HQ + h).to(tl.int64) * Sq + offs_q, lse, mask=offs_q < Sq)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------


@triton.jit
def _probs_dlogits(
  row_x,
  col_x,
  row_g,
  col_g,
  lse,
  delta,
  offs_q,
  offs_k,
  mask,
  MASK: tl.constexpr,
  MATH: tl.constexpr,
  PRECISION: tl.constexpr,
  MASKED: tl.constexpr,
  KEYS_ON_ROWS: tl.constexpr,
):
  """The backward's tile math, shared by the dK/dV and dQ kernels: P recomputed from lse, and dS
  w.r.t. the scaled q k^T (before the SCALE chain factor, which callers apply to the sums).

  Logits = row_x col_x^T and dP = row_g col_g^T: (k, q, v, dO) for the dK/dV kernel's transposed
  [keys, queries] tiles (KEYS_ON_ROWS), (q, k, dO, v) for the dQ kernel's [queries, keys] tiles.
  """
  SCALE, SOFTCAP = MATH
  s, c = _logits2(tl.dot(row_x, tl.trans(col_x), input_precision=PRECISION), MATH)
  # lse = +inf for fully masked rows (and for rows past Sq), so p is exactly 0 there.
  p = tl.exp2(s * c - _query_axis(lse * LOG2E, KEYS_ON_ROWS))
  if MASKED:
    p = tl.where(_allowed(offs_q, offs_k, mask, MASK, KEYS_ON_ROWS), p, 0.0)
  dp = tl.dot(row_g, tl.trans(col_g), input_precision=PRECISION)
  ds = p * (dp - _query_axis(delta, KEYS_ON_ROWS))
  if SOFTCAP > 0:
    # d/dx [c tanh(x / c)] = 1 - tanh^2 = 1 - (s / c)^2, with s = (base-2 logit) / log2(e).
    t = s / (SOFTCAP * LOG2E)
    ds = ds * (1.0 - t * t)
  return p, ds


@triton.jit
def _row_delta(o, do):
  """delta = rowsum(O * dO) in float32: the softmax-Jacobian term shared by a row's key blocks."""
  return tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)


@triton.jit
def _bwd_delta_kernel(
  o_ptr, do_ptr, B, Sq, delta_ptr, HQ: tl.constexpr, D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr
):
  """The atomic backward's pre-pass (the deterministic one computes delta in its dQ kernel)."""
  pid = tl.program_id(0)
  bh = pid % (B * HQ)
  qb = pid // (B * HQ)
  b = bh // HQ
  h = bh % HQ
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  o = _load_rows(
    _rows(_head(o_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  do = _load_rows(
    _rows(_head(do_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  tl.store(delta_ptr + bh.to(tl.int64) * Sq + offs_q, _row_delta(o, do), mask=offs_q < Sq)


@triton.jit
def _atomic_add_rows(
  x,
  head,
  start,
  offs_s,
  S,
  H: tl.constexpr,
  D: tl.constexpr,
  BLOCK: tl.constexpr,
  BLOCK_D: tl.constexpr,
  CHECK_ROWS: tl.constexpr,
  TRANSPOSED: tl.constexpr,
):
  """Adds x ([BLOCK, BLOCK_D], or [BLOCK_D, BLOCK] when TRANSPOSED) into rows start.. of a float32
  head with relaxed atomics: they only need to be atomic, not ordered with anything else."""
  offs_d = tl.arange(0, BLOCK_D)
  row0 = head + start.to(tl.int64) * (H * D)
  if TRANSPOSED:
    ptrs = row0 + (tl.arange(0, BLOCK)[None, :] * (H * D) + offs_d[:, None])
    ok = (offs_s[None, :] < S) & (offs_d[:, None] < D)
    d_ok = offs_d[:, None] < D
  else:
    ptrs = row0 + (tl.arange(0, BLOCK)[:, None] * (H * D) + offs_d[None, :])
    ok = (offs_s[:, None] < S) & (offs_d[None, :] < D)
    d_ok = offs_d[None, :] < D
  if CHECK_ROWS:
    tl.atomic_add(ptrs, x, mask=ok, sem="relaxed")
  elif D == BLOCK_D:
    tl.atomic_add(ptrs, x, sem="relaxed")
  else:
    tl.atomic_add(ptrs, x, mask=d_ok, sem="relaxed")


@triton.jit
def _dkdv_range(
  dk,
  dv,
  k,
  v,
  q_heads,
  lo,
  hi,
  offs_k,
  mask,
  MASK: tl.constexpr,
  MATH: tl.constexpr,
  PRECISION: tl.constexpr,
  MASKED: tl.constexpr,
  ATOMIC_DQ: tl.constexpr,
  HQ: tl.constexpr,
  D: tl.constexpr,
  BLOCK_Q: tl.constexpr,
  BLOCK_D: tl.constexpr,
):
  """dK, dV += this key block's share of query blocks [lo, hi) of one query head; with ATOMIC_DQ
  also adds each tile's dQ = dS K into the float32 buffer. q_heads: that head's (q, dO, dQ-buffer,
  lse row, delta row) pointers."""
  q_head, do_head, dq_head, lse_row, delta_row = q_heads
  SCALE = MATH[0]
  Sq = mask[1]
  for qb in range(lo, hi):
    start = qb * BLOCK_Q
    offs_q = start + tl.arange(0, BLOCK_Q)
    q = _load_rows(_rows(q_head, start, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, MASKED)
    do = _load_rows(_rows(do_head, start, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, MASKED)
    lse = _load_vec(lse_row, offs_q, Sq, float("inf"), MASKED)
    delta = _load_vec(delta_row, offs_q, Sq, 0.0, MASKED)
    p_t, ds_t = _probs_dlogits(k, q, v, do, lse, delta, offs_q, offs_k, mask, MASK, MATH, PRECISION, MASKED, True)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
    ds_t = ds_t.to(q.dtype)
    dk = tl.dot(ds_t, q, dk, input_precision=PRECISION)
    if ATOMIC_DQ:
      if BLOCK_D >= BLOCK_Q:
        # dQ^T = K^T dS^T, [BLOCK_D, BLOCK_Q]: the larger side is wgmma's M, which must be >= 64
        # (BLOCK_Q is often 16 or 32 here, the head dim 64 or more).
        dq = tl.dot(tl.trans(k), ds_t, input_precision=PRECISION) * SCALE
        _atomic_add_rows(dq, dq_head, start, offs_q, Sq, HQ, D, BLOCK_Q, BLOCK_D, MASKED, True)
      else:
        dq = tl.dot(tl.trans(ds_t), k, input_precision=PRECISION) * SCALE
        _atomic_add_rows(dq, dq_head, start, offs_q, Sq, HQ, D, BLOCK_Q, BLOCK_D, MASKED, False)
  return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
  q_ptr,
  k_ptr,
  v_ptr,
  do_ptr,
  lse_ptr,
  delta_ptr,
  runs_ptr,
  order_ptr,
  off_ptr,
  prefix_ptr,
  qseg_ptr,
  kseg_ptr,
  kvlen_ptr,
  B,
  Sq,
  Skv,
  dk_ptr,
  dv_ptr,
  dq_ptr,
  HQ: tl.constexpr,
  HKV: tl.constexpr,
  D: tl.constexpr,
  SCALE: tl.constexpr,
  SOFTCAP: tl.constexpr,
  IS_CAUSAL: tl.constexpr,
  HAS_PREFIX: tl.constexpr,
  HAS_SEG: tl.constexpr,
  HAS_KVLEN: tl.constexpr,
  ATOMIC_DQ: tl.constexpr,
  BLOCK_Q: tl.constexpr,
  BLOCK_K: tl.constexpr,
  BLOCK_D: tl.constexpr,
  PRECISION: tl.constexpr,
):
  """One program per (key block, batch, kv head): walks its column's runs for every query head of
  the group, so dK/dV are summed over the group without atomics. dq_ptr: the float32 dQ buffer
  (zeroed by the launcher) when ATOMIC_DQ, else an unread 1-element placeholder (outputs are
  positional in jax_triton, so the kernel keeps one signature for both backward forms)."""
  GROUP: tl.constexpr = HQ // HKV
  kb, b, hk = _program(order_ptr, B * HKV, HKV)
  offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
  k = _load_rows(
    _rows(_head(k_ptr, b, hk, Skv, HKV, D), kb * BLOCK_K, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, True
  )
  v = _load_rows(
    _rows(_head(v_ptr, b, hk, Skv, HKV, D), kb * BLOCK_K, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, True
  )
  lo, run_lo, run_hi, hi = _runs(runs_ptr, b, kb, tl.cdiv(Skv, BLOCK_K))
  mask = (b, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr)
  MASK = (IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
  MATH = (SCALE, SOFTCAP)
  dk = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
  dv = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
  for g in range(0, GROUP):
    h = hk * GROUP + g
    row = (b * HQ + h).to(tl.int64) * Sq
    q_heads = (
      _head(q_ptr, b, h, Sq, HQ, D),
      _head(do_ptr, b, h, Sq, HQ, D),
      _head(dq_ptr, b, h, Sq, HQ, D),
      lse_ptr + row,
      delta_ptr + row,
    )
    dk, dv = _dkdv_range(
      dk, dv, k, v, q_heads, lo, run_lo, offs_k, mask, MASK, MATH, PRECISION, True, ATOMIC_DQ, HQ, D, BLOCK_Q, BLOCK_D
    )
    dk, dv = _dkdv_range(
      dk,
      dv,
      k,
      v,
      q_heads,
      run_lo,
      run_hi,
      offs_k,
      mask,
      MASK,
      MATH,
      PRECISION,
      False,
      ATOMIC_DQ,
      HQ,
      D,
      BLOCK_Q,
      BLOCK_D,
    )
    dk, dv = _dkdv_range(
      dk, dv, k, v, q_heads, run_hi, hi, offs_k, mask, MASK, MATH, PRECISION, True, ATOMIC_DQ, HQ, D, BLOCK_Q, BLOCK_D
    )
  io_mask = _io_mask(offs_k, Skv, D, BLOCK_D)
  dk_ptrs = _rows(_head(dk_ptr, b, hk, Skv, HKV, D), kb * BLOCK_K, HKV, D, BLOCK_K, BLOCK_D)
  dv_ptrs = _rows(_head(dv_ptr, b, hk, Skv, HKV, D), kb * BLOCK_K, HKV, D, BLOCK_K, BLOCK_D)
  tl.store(dk_ptrs, (dk * SCALE).to(dk_ptr.dtype.element_ty), mask=io_mask)
  tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _dq_range(
  dq,
  q,
  do,
  lse,
  delta,
  kv_heads,
  lo,
  hi,
  offs_q,
  mask,
  MASK: tl.constexpr,
  MATH: tl.constexpr,
  PRECISION: tl.constexpr,
  MASKED: tl.constexpr,
  HKV: tl.constexpr,
  D: tl.constexpr,
  BLOCK_K: tl.constexpr,
  BLOCK_D: tl.constexpr,
):
  k_head, v_head = kv_heads
  Skv = mask[2]
  for kb in range(lo, hi):
    start = kb * BLOCK_K
    offs_k = start + tl.arange(0, BLOCK_K)
    k = _load_rows(_rows(k_head, start, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, MASKED)
    v = _load_rows(_rows(v_head, start, HKV, D, BLOCK_K, BLOCK_D), offs_k, Skv, D, BLOCK_D, MASKED)
    ds = _probs_dlogits(q, k, do, v, lse, delta, offs_q, offs_k, mask, MASK, MATH, PRECISION, MASKED, False)[1]
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
  return dq


@triton.jit
def _bwd_dq_kernel(
  q_ptr,
  k_ptr,
  v_ptr,
  o_ptr,
  do_ptr,
  lse_ptr,
  runs_ptr,
  order_ptr,
  off_ptr,
  prefix_ptr,
  qseg_ptr,
  kseg_ptr,
  kvlen_ptr,
  B,
  Sq,
  Skv,
  dq_ptr,
  delta_ptr,
  HQ: tl.constexpr,
  HKV: tl.constexpr,
  D: tl.constexpr,
  SCALE: tl.constexpr,
  SOFTCAP: tl.constexpr,
  IS_CAUSAL: tl.constexpr,
  HAS_PREFIX: tl.constexpr,
  HAS_SEG: tl.constexpr,
  HAS_KVLEN: tl.constexpr,
  BLOCK_Q: tl.constexpr,
  BLOCK_K: tl.constexpr,
  BLOCK_D: tl.constexpr,
  PRECISION: tl.constexpr,
):
  """The deterministic backward's first launch: dQ of one query block, and delta for its rows
  (stored for the dK/dV kernel that runs next)."""
  qb, b, h = _program(order_ptr, B * HQ, HQ)
  hk = h // (HQ // HKV)
  offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
  q = _load_rows(
    _rows(_head(q_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  do = _load_rows(
    _rows(_head(do_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  o = _load_rows(
    _rows(_head(o_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D), offs_q, Sq, D, BLOCK_D, True
  )
  delta = _row_delta(o, do)
  row = (b * HQ + h).to(tl.int64) * Sq
  tl.store(delta_ptr + row + offs_q, delta, mask=offs_q < Sq)
  lse = tl.load(lse_ptr + row + offs_q, mask=offs_q < Sq, other=float("inf"))
  kv_heads = (_head(k_ptr, b, hk, Skv, HKV, D), _head(v_ptr, b, hk, Skv, HKV, D))
  lo, run_lo, run_hi, hi = _runs(runs_ptr, b, qb, tl.cdiv(Sq, BLOCK_Q))
  mask = (b, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr)
  MASK = (IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
  MATH = (SCALE, SOFTCAP)
  dq = tl.zeros([BLOCK_Q, BLOCK_D], tl.float32)
  dq = _dq_range(
    dq, q, do, lse, delta, kv_heads, lo, run_lo, offs_q, mask, MASK, MATH, PRECISION, True, HKV, D, BLOCK_K, BLOCK_D
  )
  dq = _dq_range(
    dq,
    q,
    do,
    lse,
    delta,
    kv_heads,
    run_lo,
    run_hi,
    offs_q,
    mask,
    MASK,
    MATH,
    PRECISION,
    False,
    HKV,
    D,
    BLOCK_K,
    BLOCK_D,
  )
  dq = _dq_range(
    dq, q, do, lse, delta, kv_heads, run_hi, hi, offs_q, mask, MASK, MATH, PRECISION, True, HKV, D, BLOCK_K, BLOCK_D
  )
  dq_ptrs = _rows(_head(dq_ptr, b, h, Sq, HQ, D), qb * BLOCK_Q, HQ, D, BLOCK_Q, BLOCK_D)
  tl.store(dq_ptrs, (dq * SCALE).to(dq_ptr.dtype.element_ty), mask=_io_mask(offs_q, Sq, D, BLOCK_D))


# --------------------------------------------------------------------------------------------
# Launch recipes. `launch(kernel, grid, operands, outputs, meta, tiling, zeroed=())` is supplied
# by the caller: operands are arrays and ints in kernel order, outputs are (shape, dtype) pairs
# appended after them, meta are constexprs, tiling gives num_warps / num_stages, zeroed lists the
# outputs that must start as zeros. Returns the outputs, which support `.astype`.
# --------------------------------------------------------------------------------------------


def block_d(head_dim: int) -> int:
  """The padded head-dim block the kernels load: the next power of two, at least 16 (tl.dot)."""
  return max(16, triton.next_power_of_2(head_dim))


def delta_tiling(head_dim: int) -> Tiling:
  """The atomic backward's delta pre-pass: memory-bound, about 4K elements of O and of dO per
  program (16 float32 registers each per thread at 4 warps)."""
  rows = min(128, max(16, 4096 // block_d(head_dim)))
  return Tiling(block_q=rows, block_k=rows, num_warps=4, num_stages=1)


def _meta(q, k, cfg: KernelConfig, tiling: Tiling) -> dict:
  d = q.shape[3]
  return dict(
    HQ=q.shape[2],
    HKV=k.shape[2],
    D=d,
    SCALE=float(cfg.scale),
    SOFTCAP=float(cfg.softcap),
    IS_CAUSAL=cfg.causal,
    HAS_PREFIX=cfg.has_prefix,
    HAS_SEG=cfg.has_segments,
    HAS_KVLEN=cfg.has_kv_len,
    BLOCK_Q=tiling.block_q,
    BLOCK_K=tiling.block_k,
    BLOCK_D=block_d(d),
    # float32 inputs: three TF32 products per dot (about float32 accuracy on the tensor
    # cores). Plain TF32 lost the cancellation in dS = P (dP - delta): with one key per
    # row dQ should be 0 and came out at 2e-2. Other dtypes ignore the setting.
    PRECISION="tf32x3" if str(q.dtype) == "float32" else "tf32",
  )


def check_shapes(q, k, v, cfg: KernelConfig) -> None:
  """Raises ValueError for what the kernels do not handle (callers turn it into their error)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[2] % k.shape[2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"flash_attention: bad shapes q{q.shape} k{k.shape} v{v.shape}.")
  if not 16 <= q.shape[3] <= 256:
    raise ValueError(f"flash_attention: head dim {q.shape[3]} outside the supported 16..256.")
  for pass_, tiling in (("forward", cfg.fwd), ("dK/dV", cfg.dkdv), ("dQ", cfg.dq)):
    for name, blk in (("block_q", tiling.block_q), ("block_k", tiling.block_k)):
      if blk < 16 or blk & (blk - 1):
        raise ValueError(f"flash_attention: {pass_} {name}={blk} must be a power of two >= 16 (tl.dot).")


def _grid(seq_len: int, block: int, batch: int, heads: int) -> tuple[int]:
  programs = triton.cdiv(seq_len, block) * batch * heads
  if programs >= 2**31:
    raise ValueError(f"flash_attention: {programs} programs exceed grid axis 0 (2^31 - 1).")
  return (programs,)


def forward(launch, q, k, v, arrays: MaskArrays, cfg: KernelConfig):
  """Returns (out [B, Sq, HQ, D] in q.dtype, lse float32 [B, HQ, Sq])."""
  b, sq, hq, d = q.shape
  t = cfg.fwd
  return launch(
    _fwd_kernel,
    _grid(sq, t.block_q, b, hq),
    [q, k, v, arrays.fwd_runs, arrays.fwd_order, *arrays.spec_operands(), b, sq, k.shape[1]],
    [(q.shape, q.dtype), ((b, hq, sq), "float32")],
    _meta(q, k, cfg, t),
    t,
  )


def backward(launch, q, k, v, out, lse, dout, arrays: MaskArrays, cfg: KernelConfig):
  """Returns (dq, dk, dv) in the dtypes of q, k, v."""
  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  spec = arrays.spec_operands()
  if cfg.deterministic:
    t = cfg.dq
    dq, delta = launch(
      _bwd_dq_kernel,
      _grid(sq, t.block_q, b, hq),
      [q, k, v, out, dout, lse, arrays.dq_runs, arrays.dq_order, *spec, b, sq, skv],
      [(q.shape, q.dtype), ((b, hq, sq), "float32")],
      _meta(q, k, cfg, t),
      t,
    )
  else:
    # A separate pre-pass, as in FlashAttention-2/3: every dK/dV program needs delta for all the
    # query rows it visits before its first tile, so no program of the fused launch could compute
    # it first (computing it per tile instead would load O with every Q tile). The pass reads O
    # and dO once: memory-bound, estimated at about 1% of a D=128 backward (not yet timed).
    t = delta_tiling(d)
    (delta,) = launch(
      _bwd_delta_kernel,
      _grid(sq, t.block_q, b, hq),
      [out, dout, b, sq],
      [((b, hq, sq), "float32")],
      dict(HQ=hq, D=d, BLOCK_Q=t.block_q, BLOCK_D=block_d(d)),
      t,
    )
  t = cfg.dkdv
  atomic = not cfg.deterministic
  dk, dv, dq_acc = launch(
    _bwd_dkdv_kernel,
    _grid(skv, t.block_k, b, hkv),
    [q, k, v, dout, lse, delta, arrays.dkdv_runs, arrays.dkdv_order, *spec, b, sq, skv],
    [(k.shape, k.dtype), (v.shape, v.dtype), (q.shape if atomic else (1,), "float32")],
    dict(_meta(q, k, cfg, t), ATOMIC_DQ=atomic),
    t,
    zeroed=(2,) if atomic else (),
  )
  if atomic:
    dq = dq_acc.astype(q.dtype)
  return dq, dk, dv
