"""Attention masks described as data, never as a dense S x S array.

A query position i of example b may attend key position j when ALL of the present terms hold:

  causal      j <= i + causal_offset[b]                    (decoding with a cache: offset = cache index)
              OR j < prefix_len[b]                         (prefix-LM: bidirectional prefix, if given)
  segments    q_segment_ids[b, i] == kv_segment_ids[b, j]  (packing; Flamingo "most recent image")
  padding     j < kv_valid_len[b]                          (padded media / padded keys)

A query row with no allowed key gets output 0 (and gradient 0), never NaN or a mean of V.

`tile_map` turns the description into a per-(query block, key block) map, and `tile_runs` turns the
map into the kernels' loop bounds: where each row and column starts and ends (EMPTY tiles outside
cost nothing) and its run of FULL tiles (no mask arithmetic there).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

TILE_EMPTY, TILE_PARTIAL, TILE_FULL = 0, 1, 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MaskSpec:
  """Mask description. Array fields are batched; `causal` is static.

  Attributes:
    causal: whether the causal term applies.
    causal_offset: int32 [B] (or scalar) shift of the causal diagonal; 0 for training.
    prefix_len: int32 [B] bidirectional prefix length for prefix-LM; only meaningful with causal.
    q_segment_ids: int32 [B, Sq].
    kv_segment_ids: int32 [B, Skv]. Segment ids are given for both sides or neither.
    kv_valid_len: int32 [B] number of valid keys per example.
  """

  causal: bool = dataclasses.field(default=False, metadata=dict(static=True))
  causal_offset: Optional[jax.Array] = None
  prefix_len: Optional[jax.Array] = None
  q_segment_ids: Optional[jax.Array] = None
  kv_segment_ids: Optional[jax.Array] = None
  kv_valid_len: Optional[jax.Array] = None

  def __post_init__(self):
    if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
      raise ValueError("MaskSpec: q_segment_ids and kv_segment_ids must be given together.")
    if self.prefix_len is not None and not self.causal:
      raise ValueError("MaskSpec: prefix_len needs causal=True (the prefix is what is exempt from it).")
    if self.causal_offset is not None and not self.causal:
      raise ValueError("MaskSpec: causal_offset needs causal=True.")

  @property
  def is_empty(self) -> bool:
    """True when the description masks nothing."""
    return not self.causal and self.q_segment_ids is None and self.kv_valid_len is None

  def validate(self, batch: int, q_len: int, kv_len: int) -> None:
    """Raises ValueError naming the field whose shape does not fit [B, Sq] x [B, Skv]."""

    def check(name, value, shapes):
      if value is not None and jnp.shape(value) not in shapes:
        raise ValueError(f"MaskSpec.{name} has shape {jnp.shape(value)}; expected one of {shapes}.")

    check("causal_offset", self.causal_offset, [(), (batch,)])
    check("prefix_len", self.prefix_len, [(batch,)])
    check("q_segment_ids", self.q_segment_ids, [(batch, q_len)])
    check("kv_segment_ids", self.kv_segment_ids, [(batch, kv_len)])
    check("kv_valid_len", self.kv_valid_len, [(batch,)])

  def dense(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
    """bool [B, Sq, Skv] mask. For references and tests: kernels never build this."""
    return _allowed(self, batch, jnp.arange(q_len), jnp.arange(kv_len))


def _allowed(spec: MaskSpec, batch: int, q_pos: jax.Array, kv_pos: jax.Array) -> jax.Array:
  """bool [B, len(q_pos), len(kv_pos)] for arbitrary position vectors."""
  qi = q_pos[None, :, None]
  kj = kv_pos[None, None, :]
  ok = jnp.ones((batch, q_pos.shape[0], kv_pos.shape[0]), bool)
  if spec.causal:
    offset = 0 if spec.causal_offset is None else jnp.broadcast_to(spec.causal_offset, (batch,))[:, None, None]
    visible = kj <= qi + offset
    if spec.prefix_len is not None:
      visible = visible | (kj < spec.prefix_len[:, None, None])
    ok = ok & visible
  if spec.q_segment_ids is not None:
    ok = ok & (spec.q_segment_ids[:, q_pos, None] == spec.kv_segment_ids[:, None, kv_pos])
  if spec.kv_valid_len is not None:
    ok = ok & (kj < spec.kv_valid_len[:, None, None])
  return ok


def tile_map(spec: MaskSpec, batch: int, q_len: int, kv_len: int, block_q: int, block_k: int) -> jax.Array:
  """int8 [B, ceil(Sq/block_q), ceil(Skv/block_k)]: TILE_EMPTY, TILE_PARTIAL or TILE_FULL.

  Positions past the sequence ends count as masked, so ragged last tiles are PARTIAL at most.
  Computed from O(S) data per block. The map is conservative: a tile marked EMPTY has no allowed
  pair and a tile marked FULL has only allowed pairs; anything uncertain is PARTIAL (the kernel then
  applies the exact mask). Segment ids are classified by per-block min/max: FULL only when both
  blocks hold one and the same id, EMPTY when the id ranges are disjoint.
  """
  nq, nk = -(-q_len // block_q), -(-kv_len // block_k)
  q_lo = jnp.arange(nq) * block_q
  q_hi = jnp.minimum(q_lo + block_q, q_len) - 1  # last valid query in the block
  k_lo = jnp.arange(nk) * block_k
  k_hi = jnp.minimum(k_lo + block_k, kv_len) - 1
  ragged_q = (q_len % block_q) != 0
  ragged_k = (kv_len % block_k) != 0
  shape = (batch, nq, nk)
  any_ok = jnp.ones(shape, bool)
  all_ok = jnp.ones(shape, bool)
  # Ragged last blocks contain out-of-range slots: never FULL.
  if ragged_q:
    all_ok = all_ok & (jnp.arange(nq) < nq - 1)[None, :, None]
  if ragged_k:
    all_ok = all_ok & (jnp.arange(nk) < nk - 1)[None, None, :]
  if spec.causal:
    off = (
      jnp.zeros((batch,), jnp.int32)
      if spec.causal_offset is None
      else jnp.broadcast_to(spec.causal_offset, (batch,)).astype(jnp.int32)
    )
    off = off[:, None, None]
    qlo, qhi = q_lo[None, :, None], q_hi[None, :, None]
    klo, khi = k_lo[None, None, :], k_hi[None, None, :]
    c_any = klo <= qhi + off  # some (i, j) with j <= i + off
    c_all = khi <= qlo + off  # every (i, j)
    if spec.prefix_len is not None:
      p = spec.prefix_len[:, None, None]
      c_any = c_any | (klo < p)
      c_all = c_all | (khi < p)
    any_ok, all_ok = any_ok & c_any, all_ok & c_all
  if spec.kv_valid_len is not None:
    n = spec.kv_valid_len[:, None, None]
    any_ok = any_ok & (k_lo[None, None, :] < n)
    all_ok = all_ok & (k_hi[None, None, :] < n)
  if spec.q_segment_ids is not None:
    qmin, qmax = _block_min_max(spec.q_segment_ids, block_q, nq)
    kmin, kmax = _block_min_max(spec.kv_segment_ids, block_k, nk)
    overlap = (qmin[:, :, None] <= kmax[:, None, :]) & (kmin[:, None, :] <= qmax[:, :, None])
    same = (qmin == qmax)[:, :, None] & (kmin == kmax)[:, None, :] & (qmin[:, :, None] == kmin[:, None, :])
    any_ok, all_ok = any_ok & overlap, all_ok & same
  return jnp.where(all_ok, TILE_FULL, jnp.where(any_ok, TILE_PARTIAL, TILE_EMPTY)).astype(jnp.int8)


def tile_spans(tiles: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int32 [B, nq, 2] and [B, nk, 2] half-open spans [first, last + 1) of the non-EMPTY tiles in
  each query-block row and each key-block column of `tiles` ([0, 0) when a row or column is all
  EMPTY): the outer bounds of where the kernels loop (tile_runs adds the FULL run inside). EMPTY
  tiles inside a span are not skipped, so kernels must mask every tile they do not know is FULL."""
  nonempty = tiles != TILE_EMPTY
  return _span(nonempty), _span(jnp.swapaxes(nonempty, 1, 2))


def tile_runs(tiles: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The kernels' loop bounds: int32 [B, nq, 4] per query-block row and [B, nk, 4] per key-block
  column of `tiles`, each (first, run_start, run_end, last + 1) with first <= run_start <= run_end
  <= last + 1. [first, last + 1) is the span of tile_spans; [run_start, run_end) its longest run of
  FULL tiles (the first one if several are as long; empty, at last + 1, when there is none).

  A kernel visits the head [first, run_start) and the tail [run_end, last + 1) with the exact mask
  and the run without any mask arithmetic or bounds check, so it never reads the map itself. For
  causal, prefix-LM, padding and sorted segment masks the FULL tiles of a row are contiguous and
  the head and tail hold only PARTIAL tiles; for other masks the head and tail may also hold FULL
  or EMPTY tiles, which the exact mask handles (at the cost of their arithmetic)."""

  def runs(classes):  # [..., n] int8 -> [..., 4]
    n = classes.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    span = jnp.moveaxis(_span(classes != TILE_EMPTY), -1, 0)
    full = classes == TILE_FULL
    # Length of the FULL run ending at each tile: distance to the last non-FULL tile before it.
    last_break = jax.lax.cummax(jnp.where(full, -1, idx), axis=classes.ndim - 1)
    length = jnp.where(full, idx - last_break, 0)
    best = length.max(-1)
    end = jnp.argmax(length, axis=-1).astype(jnp.int32) + 1
    run_start = jnp.where(best > 0, end - best, span[1])
    run_end = jnp.where(best > 0, end, span[1])
    return jnp.stack([span[0], run_start, run_end, span[1]], -1).astype(jnp.int32)

  return runs(tiles), runs(jnp.swapaxes(tiles, 1, 2))


def heaviest_first(runs: jax.Array) -> jax.Array:
  """int32 [n]: the block indices of `runs` ([B, n, 4], tile_runs) by the number of tiles they
  visit summed over the batch, largest first (ties in index order). Kernels launch their programs
  in this order, so the longest causal rows start first and the short ones fill the tail."""
  work = (runs[..., 3] - runs[..., 0]).sum(0)
  return jnp.argsort(-work, stable=True).astype(jnp.int32)


def _span(nonempty: jax.Array) -> jax.Array:
  """[..., n] bool -> [..., 2] half-open span [first, last + 1) of the True entries ([0, 0) if none)."""
  n = nonempty.shape[-1]
  idx = jnp.arange(n, dtype=jnp.int32)
  first = jnp.min(jnp.where(nonempty, idx, n), axis=-1)
  last = jnp.max(jnp.where(nonempty, idx, -1), axis=-1)
  any_ = last >= 0
  return jnp.stack([jnp.where(any_, first, 0), jnp.where(any_, last + 1, 0)], -1).astype(jnp.int32)


def _block_min_max(ids: jax.Array, block: int, nblocks: int):
  """Per-block min and max of [B, S] ids, ignoring the padding of a ragged last block."""
  b, s = ids.shape
  pad = nblocks * block - s
  big = jnp.iinfo(jnp.int32).max
  lo = jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=big).reshape(b, nblocks, block)
  hi = jnp.pad(ids.astype(jnp.int32), ((0, 0), (0, pad)), constant_values=-big).reshape(b, nblocks, block)
  return lo.min(-1), hi.max(-1)
