"""FlashAttention-2 style forward and backward kernels written in the Triton language.

Layout: q [B, Sq, HQ, D], k/v [B, Skv, HKV, D], all contiguous; HQ a multiple of HKV (GQA/MQA: query
head h reads kv head h // (HQ // HKV)). D may be any size up to 256: blocks are padded to
BLOCK_D = next_power_of_2(D) with masked loads, so D=80 or 96 needs no copy on the host.

The mask arrives as data (see mmjax.kernels.mask): a per-(batch, query block, key block) int8 tile
map says per tile whether it is EMPTY, PARTIAL or FULL, and `tile_spans` gives each query-block
row (and each key-block column) the span from its first to its last non-EMPTY tile. A kernel loops
over that span only, so EMPTY tiles outside it cost nothing (no loads, no math); FULL tiles skip
the mask arithmetic, and any other tile in the span gets the exact mask. The span loop has
unconditional loads, which Triton's software pipeliner (num_stages) can prefetch: a loop over all
tiles with `if tile != EMPTY` around the loads cannot be pipelined. For the masks that matter
(causal, prefix-LM, padding, sorted segment ids such as Flamingo's media-local mask) the
non-EMPTY tiles of a row are contiguous, so the span skips every EMPTY tile. All three kernels
that visit tiles read the same map; only the traversal order differs. The exact per-element rule
lives in one @triton.jit helper, `_allowed`, so forward and backward cannot disagree about the mask.

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
TILE_FULL: tl.constexpr = tl.constexpr(2)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How one pass (forward, or the backward's dK/dV and dQ kernels) is cut into programs."""
  block_q: int = 64
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __str__(self):
    return f"{self.block_q}x{self.block_k}w{self.num_warps}s{self.num_stages}"


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """Everything the kernels are specialised on besides shapes and dtypes (hashable: a JAX
  nondiff argument). The forward and the backward have their own tiling: the backward holds
  more tiles per program (K, V, Q, dO and four accumulators), so its best blocks differ."""
  scale: float
  softcap: float  # 0.0 means no soft-cap
  causal: bool
  has_prefix: bool
  has_segments: bool
  has_kv_len: bool
  fwd: Tiling = Tiling()
  bwd: Tiling = Tiling()


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
def _logits2(q, k, SCALE: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr):
  """Scaled (and soft-capped) q k^T in float32, times log2(e): the kernels work in base 2 so that
  each softmax exponent is one exp2 of a difference, with the scale folded into one multiply."""
  if SOFTCAP > 0:
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * SCALE
    # tanh via exp: portable to the interpreter; saturates correctly (exp -> inf gives 1).
    s = SOFTCAP * LOG2E * (1.0 - 2.0 / (tl.exp(2.0 * s / SOFTCAP) + 1.0))
  else:
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (SCALE * LOG2E)
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
                       HAS_PREFIX: tl.constexpr, HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr,
                       PRECISION: tl.constexpr):
  """Backward tile math shared by the dK/dV and dQ kernels.

  Returns P (recomputed from lse) and dS w.r.t. the scaled q k^T, i.e. before the 1/SCALE chain
  factor, which the callers apply once to the accumulated dK / dQ.
  """
  s = _logits2(q, k, SCALE, SOFTCAP, PRECISION)
  # lse = +inf for fully masked rows, so p is exactly 0 there.
  p = tl.exp2(s - (lse * LOG2E)[:, None])
  if tile != TILE_FULL:
    ok = _allowed(b, offs_q, offs_k, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                  IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
    p = tl.where(ok, p, 0.0)
  dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
  ds = p * (dp - delta[:, None])
  if SOFTCAP > 0:
    # d/dx [c tanh(x / c)] = 1 - tanh^2 = 1 - (s / c)^2, with s = (base-2 logit) / log2(e).
    t = s / (SOFTCAP * LOG2E)
    ds = ds * (1.0 - t * t)
  return p, ds


# --------------------------------------------------------------------------------------------
# Kernels. Argument order: input pointers, runtime ints, output pointers, constexprs (the order
# jax_triton requires: outputs follow every positional operand).
# --------------------------------------------------------------------------------------------

@triton.jit
def _fwd_kernel(q_ptr, k_ptr, v_ptr, tiles_ptr, row_span_ptr, col_span_ptr, off_ptr, prefix_ptr,
                qseg_ptr, kseg_ptr, kvlen_ptr,
                Sq, Skv,
                o_ptr, lse_ptr,
                HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
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
  row = b.to(tl.int64) * nqb + qb
  tile_row = tiles_ptr + row * nkb
  for kb in range(tl.load(row_span_ptr + 2 * row), tl.load(row_span_ptr + 2 * row + 1)):
    tile = tl.load(tile_row + kb)
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ptrs, k_ok = _row_ptrs(k_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
    v_ptrs, _ = _row_ptrs(v_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
    k = tl.load(k_ptrs, mask=k_ok, other=0.0)
    v = tl.load(v_ptrs, mask=k_ok, other=0.0)
    s = _logits2(q, k, SCALE, SOFTCAP, PRECISION)
    if tile != TILE_FULL:
      ok = _allowed(b, offs_q, offs_k, Sq, Skv, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr,
                    kvlen_ptr, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN)
      s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m, tl.max(s, 1))
    # A row with nothing allowed so far has m_new = -inf; subtracting it would give NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m - m_safe)
    l = l * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    m = m_new

  empty_row = l == 0.0
  out = acc / tl.where(empty_row, 1.0, l)[:, None]
  o_ptrs, _ = _row_ptrs(o_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=q_ok)
  # m is in base-2 units; the residual lse is in natural-log units.
  lse = tl.where(empty_row, float("inf"), m / LOG2E + tl.log(tl.where(empty_row, 1.0, l)))
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
def _bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, tiles_ptr, row_span_ptr,
                     col_span_ptr, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                     Sq, Skv,
                     dk_ptr, dv_ptr,
                     HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                     SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                     HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
  """One program per (key block, batch, kv head): walks its column's span of the tile map, and for
  GQA all query heads of the group, so dK/dV are summed over the group without atomics."""
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
  col = b.to(tl.int64) * nkb + kb
  tile_col = tiles_ptr + b.to(tl.int64) * nqb * nkb + kb
  qb_lo = tl.load(col_span_ptr + 2 * col)
  qb_hi = tl.load(col_span_ptr + 2 * col + 1)
  for g in range(0, GROUP):
    h = hk * GROUP + g
    row_base = (b * HQ + h).to(tl.int64) * Sq
    for qb in range(qb_lo, qb_hi):
      tile = tl.load(tile_col + qb * nkb)
      offs_q = qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
      q_ptrs, q_ok = _row_ptrs(q_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
      do_ptrs, _ = _row_ptrs(do_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
      q = tl.load(q_ptrs, mask=q_ok, other=0.0)
      do = tl.load(do_ptrs, mask=q_ok, other=0.0)
      lse = tl.load(lse_ptr + row_base + offs_q, mask=offs_q < Sq, other=float("inf"))
      delta = tl.load(delta_ptr + row_base + offs_q, mask=offs_q < Sq, other=0.0)
      p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, tile, b, offs_q, offs_k, Sq, Skv,
                                 off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr, SCALE,
                                 SOFTCAP, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN, PRECISION)
      dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
      dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
  dk_ptrs, _ = _row_ptrs(dk_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  dv_ptrs, _ = _row_ptrs(dv_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
  tl.store(dk_ptrs, (dk * SCALE).to(dk_ptr.dtype.element_ty), mask=k_ok)
  tl.store(dv_ptrs, dv.to(dv_ptr.dtype.element_ty), mask=k_ok)


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, tiles_ptr, row_span_ptr,
                   col_span_ptr, off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr,
                   Sq, Skv,
                   dq_ptr,
                   HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, SCALE: tl.constexpr,
                   SOFTCAP: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_PREFIX: tl.constexpr,
                   HAS_SEG: tl.constexpr, HAS_KVLEN: tl.constexpr, BLOCK_Q: tl.constexpr,
                   BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):
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
  row = b.to(tl.int64) * nqb + qb
  tile_row = tiles_ptr + row * nkb
  for kb in range(tl.load(row_span_ptr + 2 * row), tl.load(row_span_ptr + 2 * row + 1)):
    tile = tl.load(tile_row + kb)
    offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ptrs, k_ok = _row_ptrs(k_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
    v_ptrs, _ = _row_ptrs(v_ptr, b, hk, offs_k, offs_d, Skv, HKV, D)
    k = tl.load(k_ptrs, mask=k_ok, other=0.0)
    v = tl.load(v_ptrs, mask=k_ok, other=0.0)
    p, ds = _probs_and_dlogits(q, k, v, do, lse, delta, tile, b, offs_q, offs_k, Sq, Skv,
                               off_ptr, prefix_ptr, qseg_ptr, kseg_ptr, kvlen_ptr, SCALE,
                               SOFTCAP, IS_CAUSAL, HAS_PREFIX, HAS_SEG, HAS_KVLEN, PRECISION)
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
  dq_ptrs, _ = _row_ptrs(dq_ptr, b, h, offs_q, offs_d, Sq, HQ, D)
  tl.store(dq_ptrs, (dq * SCALE).to(dq_ptr.dtype.element_ty), mask=q_ok)


# --------------------------------------------------------------------------------------------
# Launch recipes. `launch(kernel, grid, operands, outputs, meta, tiling)` is supplied by the
# caller: operands are arrays and ints in kernel order, outputs are (shape, dtype) pairs appended
# after them, meta are constexprs, tiling gives num_warps / num_stages. Returns the outputs.
#
# mask_arrays = (fwd tiles, fwd row spans, fwd col spans, bwd tiles, bwd row spans, bwd col spans,
# causal_offset, prefix_len, q_segment_ids, kv_segment_ids, kv_valid_len): the tile map depends on
# the blocks, and the two passes may use different ones (mmjax.kernels.triton_call.prepare).
# --------------------------------------------------------------------------------------------

def block_d(head_dim: int) -> int:
  """The padded head-dim block the kernels load: the next power of two, at least 16 (tl.dot)."""
  return max(16, triton.next_power_of_2(head_dim))


def _meta(q, k, cfg: KernelConfig, tiling: Tiling) -> dict:
  d = q.shape[3]
  return dict(HQ=q.shape[2], HKV=k.shape[2], D=d, SCALE=float(cfg.scale),
              SOFTCAP=float(cfg.softcap), IS_CAUSAL=cfg.causal, HAS_PREFIX=cfg.has_prefix,
              HAS_SEG=cfg.has_segments, HAS_KVLEN=cfg.has_kv_len, BLOCK_Q=tiling.block_q,
              BLOCK_K=tiling.block_k, BLOCK_D=block_d(d),
              # float32 inputs: three TF32 products per dot (about float32 accuracy on the tensor
              # cores). Plain TF32 lost the cancellation in dS = P (dP - delta): with one key per
              # row dQ should be 0 and came out at 2e-2. Other dtypes ignore the setting.
              PRECISION="tf32x3" if str(q.dtype) == "float32" else "tf32")


def check_shapes(q, k, v, cfg: KernelConfig) -> None:
  """Raises ValueError for what the kernels do not handle (callers turn it into their error)."""
  if q.ndim != 4 or k.shape != v.shape or q.shape[2] % k.shape[2] or q.shape[3] != k.shape[3]:
    raise ValueError(f"flash_attention: bad shapes q{q.shape} k{k.shape} v{v.shape}.")
  if not 16 <= q.shape[3] <= 256:
    raise ValueError(f"flash_attention: head dim {q.shape[3]} outside the supported 16..256.")
  if cfg.bwd.block_q != cfg.bwd.block_k:
    # Seen on an H100 with Triton 3.6: every backward tiling with block_q != block_k (128x64,
    # 64x128, 32x128) failed to compile in the dK/dV kernel's loop, while the interpreter ran them.
    raise ValueError(f"flash_attention: backward tiling {cfg.bwd} must be square "
                     "(block_q == block_k); other shapes failed to compile with Triton 3.6.")
  for pass_, tiling in (("forward", cfg.fwd), ("backward", cfg.bwd)):
    for name, blk in (("block_q", tiling.block_q), ("block_k", tiling.block_k)):
      if blk < 16 or blk & (blk - 1):
        raise ValueError(f"flash_attention: {pass_} {name}={blk} must be a power of two >= 16 "
                         "(tl.dot).")


def forward(launch, q, k, v, mask_arrays, cfg: KernelConfig):
  """Returns (out [B, Sq, HQ, D] in q.dtype, lse float32 [B, HQ, Sq])."""
  b, sq, hq, d = q.shape
  t = cfg.fwd
  grid = (triton.cdiv(sq, t.block_q), b * hq)
  return launch(_fwd_kernel, grid, [q, k, v, *mask_arrays[:3], *mask_arrays[6:], sq, k.shape[1]],
                [(q.shape, q.dtype), ((b, hq, sq), "float32")], _meta(q, k, cfg, t), t)


def backward(launch, q, k, v, out, lse, dout, mask_arrays, cfg: KernelConfig):
  """Returns (dq, dk, dv) in the dtypes of q, k, v."""
  b, sq, hq, d = q.shape
  skv, hkv = k.shape[1], k.shape[2]
  t = cfg.bwd
  meta = _meta(q, k, cfg, t)
  (delta,) = launch(_bwd_delta_kernel, (triton.cdiv(sq, t.block_q), b * hq), [out, dout, sq],
                    [((b, hq, sq), "float32")],
                    dict(HQ=hq, D=d, BLOCK_Q=t.block_q, BLOCK_D=meta["BLOCK_D"]), t)
  operands = [q, k, v, dout, lse, delta, *mask_arrays[3:], sq, skv]
  dk, dv = launch(_bwd_dkdv_kernel, (triton.cdiv(skv, t.block_k), b * hkv), operands,
                  [(k.shape, k.dtype), (v.shape, v.dtype)], meta, t)
  (dq,) = launch(_bwd_dq_kernel, (triton.cdiv(sq, t.block_q), b * hq), operands,
                 [(q.shape, q.dtype)], meta, t)
  return dq, dk, dv
