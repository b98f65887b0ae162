"""Attention routes vs a float64 numpy reference; mask semantics; tile map; error paths."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mmjax.attention import MaskSpec, UnsupportedAttention, attention, backend, cudnn, dispatch, tile_map
from mmjax.kernels.mask import TILE_EMPTY, TILE_FULL, tile_spans


@pytest.fixture
def x64():
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", False)


# ---- references (shared with test_triton_kernel.py) ----------------------------------------------


def numpy_allowed(b, sq, skv, causal=False, offset=None, prefix=None, qseg=None, kvseg=None, kvlen=None):
  """The MaskSpec rule written independently, loop-free, in numpy: bool [B, Sq, Skv]."""
  i = np.arange(sq)[None, :, None]
  j = np.arange(skv)[None, None, :]
  ok = np.ones((b, sq, skv), bool)
  if causal:
    off = np.zeros(b, int) if offset is None else np.broadcast_to(np.asarray(offset), (b,))
    vis = j <= i + off[:, None, None]
    if prefix is not None:
      vis |= j < np.asarray(prefix)[:, None, None]
    ok &= vis
  if qseg is not None:
    ok &= np.asarray(qseg)[:, :, None] == np.asarray(kvseg)[:, None, :]
  if kvlen is not None:
    ok &= j < np.asarray(kvlen)[:, None, None]
  return ok


def reference(q, k, v, allowed, scale, softcap=None, xp=np):
  """float64 attention with the mmjax contract (empty rows -> 0). xp = numpy or jax.numpy."""
  b, sq, hq, d = q.shape
  g = hq // k.shape[2]
  kk, vv = xp.repeat(k, g, axis=2), xp.repeat(v, g, axis=2)
  s = xp.einsum("bqhd,bkhd->bhqk", q, kk) * scale
  if softcap is not None:
    s = softcap * xp.tanh(s / softcap)
  a = xp.asarray(allowed)[:, None]
  s = xp.where(a, s, -1e300)
  p = xp.exp(s - s.max(-1, keepdims=True)) * a
  denom = p.sum(-1, keepdims=True)
  p = p / xp.where(denom == 0, 1.0, denom)
  return xp.einsum("bhqk,bkhd->bqhd", p, vv)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert not np.isnan(a).any()
  # The floor keeps round-off against an exactly-zero reference (e.g. dK with one key) finite.
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1.0)


def random_case(rng, b, sq, skv, hq, hkv, d, kind):
  q = rng.standard_normal((b, sq, hq, d)).astype(np.float32)
  k = rng.standard_normal((b, skv, hkv, d)).astype(np.float32)
  v = rng.standard_normal((b, skv, hkv, d)).astype(np.float32)
  fields = {}
  if kind in ("causal", "all"):
    fields.update(causal=True, offset=rng.integers(-3, 4, b))
  if kind == "all":
    fields.update(prefix=rng.integers(0, 5, b), kvlen=rng.integers(1, skv + 1, b))
  if kind in ("segments", "all"):
    fields.update(qseg=np.sort(rng.integers(0, 3, (b, sq)), 1), kvseg=np.sort(rng.integers(0, 3, (b, skv)), 1))
  return q, k, v, fields


def spec_from(fields):
  conv = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  return MaskSpec(
    causal=fields.get("causal", False),
    causal_offset=conv(fields.get("offset")),
    prefix_len=conv(fields.get("prefix")),
    q_segment_ids=conv(fields.get("qseg")),
    kv_segment_ids=conv(fields.get("kvseg")),
    kv_valid_len=conv(fields.get("kvlen")),
  )


# ---- mask semantics -------------------------------------------------------------------------------


def test_mask_semantics_hand_checked():
  causal = MaskSpec(causal=True).dense(1, 3, 3)[0]
  np.testing.assert_array_equal(causal, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  offset = MaskSpec(causal=True, causal_offset=jnp.array([1])).dense(1, 2, 3)[0]
  np.testing.assert_array_equal(offset, [[1, 1, 0], [1, 1, 1]])
  prefix = MaskSpec(causal=True, prefix_len=jnp.array([2])).dense(1, 3, 3)[0]
  np.testing.assert_array_equal(prefix, [[1, 1, 0], [1, 1, 0], [1, 1, 1]])
  seg = MaskSpec(q_segment_ids=jnp.array([[0, 1]]), kv_segment_ids=jnp.array([[0, 0, 1]])).dense(1, 2, 3)[0]
  np.testing.assert_array_equal(seg, [[1, 1, 0], [0, 0, 1]])
  pad = MaskSpec(kv_valid_len=jnp.array([2, 0])).dense(2, 1, 3)
  np.testing.assert_array_equal(pad[:, 0], [[1, 1, 0], [0, 0, 0]])


@settings(max_examples=10, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  sq=st.integers(1, 40),
  skv=st.integers(1, 40),
  bq=st.sampled_from([1, 4, 8, 16]),
  bk=st.sampled_from([1, 4, 8, 16]),
  kind=st.sampled_from(["none", "causal", "segments", "all"]),
)
def test_tile_map_matches_dense_mask(seed, sq, skv, bq, bk, kind):
  rng = np.random.default_rng(seed)
  fields = random_case(rng, 2, sq, skv, 1, 1, 1, kind)[3]
  spec = spec_from(fields)
  dense = numpy_allowed(2, sq, skv, **fields)
  np.testing.assert_array_equal(spec.dense(2, sq, skv), dense)
  tiles = np.asarray(tile_map(spec, 2, sq, skv, bq, bk))
  nq, nk = -(-sq // bq), -(-skv // bk)
  padded = np.zeros((2, nq * bq, nk * bk), bool)
  inside = np.zeros_like(padded)
  padded[:, :sq, :skv] = dense
  inside[:, :sq, :skv] = True
  blocks = padded.reshape(2, nq, bq, nk, bk)
  in_range = inside.reshape(2, nq, bq, nk, bk)
  any_ok = blocks.any((2, 4))
  all_ok = (blocks | ~in_range).all((2, 4)) & in_range.all((2, 4))  # ragged tiles never FULL
  assert not (any_ok & (tiles == TILE_EMPTY)).any(), "EMPTY tile with an allowed pair"
  assert (all_ok | (tiles != TILE_FULL)).all(), "FULL tile with a masked pair"


def test_tile_spans_bound_the_nonempty_tiles():
  rng = np.random.default_rng(3)
  tiles = rng.choice([TILE_EMPTY, TILE_EMPTY, 1, TILE_FULL], size=(3, 5, 7)).astype(np.int8)
  tiles[0, 2] = TILE_EMPTY  # an all-EMPTY row ...
  tiles[1, :, 4] = TILE_EMPTY  # ... and column give the empty span [0, 0)
  rows, cols = (np.asarray(x) for x in tile_spans(jnp.asarray(tiles)))
  assert rows.shape == (3, 5, 2) and cols.shape == (3, 7, 2) and rows.dtype == np.int32
  for grid, spans in ((tiles, rows), (tiles.transpose(0, 2, 1), cols)):
    for b in range(grid.shape[0]):
      for i in range(grid.shape[1]):
        idx = [j for j in range(grid.shape[2]) if grid[b, i, j] != TILE_EMPTY]
        want = (idx[0], idx[-1] + 1) if idx else (0, 0)
        assert tuple(spans[b, i]) == want, (b, i, grid[b, i], spans[b, i])


# ---- implementations vs reference -----------------------------------------------------------------

CASES = [  # b, sq, skv, hq, hkv, d, kind, softcap
  (2, 17, 17, 2, 2, 16, "causal", None),
  (1, 7, 33, 4, 1, 8, "segments", None),
  (2, 20, 13, 4, 2, 32, "all", 5.0),
  (1, 1, 9, 2, 2, 8, "none", None),
]


@pytest.mark.parametrize("impl", ["xla", "xla_chunked"])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_float64_reference(impl, case):
  b, sq, skv, hq, hkv, d, kind, softcap = case
  q, k, v, fields = random_case(np.random.default_rng(0), b, sq, skv, hq, hkv, d, kind)
  ref = reference(
    q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), numpy_allowed(b, sq, skv, **fields), 0.3, softcap
  )
  out = attention(q, k, v, mask=spec_from(fields), scale=0.3, softcap=softcap, implementation=impl)
  assert out.dtype == q.dtype and rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_chunked_gradients_match_float64(case, x64):
  b, sq, skv, hq, hkv, d, kind, softcap = case
  q, k, v, fields = random_case(np.random.default_rng(1), b, sq, skv, hq, hkv, d, kind)
  allowed = numpy_allowed(b, sq, skv, **fields)
  dout = np.random.default_rng(2).standard_normal(q.shape)
  spec = spec_from(fields)
  ref_grads = jax.grad(lambda *a: (reference(*a, allowed, 0.3, softcap, xp=jnp) * dout).sum(), argnums=(0, 1, 2))(
    *(x.astype(np.float64) for x in (q, k, v))
  )
  for block_k in (5,):
    chunked = lambda *a: backend("xla_chunked")(*a, spec, 0.3, softcap, block_k=block_k)
    grads = jax.grad(lambda *a: (chunked(*a) * dout.astype(np.float32)).sum(), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
      assert g.dtype == jnp.float32 and rel_err(g, r) < 1e-5


@pytest.mark.parametrize("impl", ["xla", "xla_chunked"])
def test_fully_masked_rows_are_zero_with_zero_grads(impl):
  rng = np.random.default_rng(3)
  q, k, v, _ = random_case(rng, 2, 6, 5, 2, 1, 8, "none")
  # Example 0: no valid keys at all; example 1: causal offset -2 leaves rows 0, 1 empty.
  spec = MaskSpec(causal=True, causal_offset=jnp.array([0, -2]), kv_valid_len=jnp.array([0, 5]))
  f = lambda q, k, v: attention(q, k, v, mask=spec, implementation=impl)
  out = f(q, k, v)
  assert not np.isnan(out).any()
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1, :2], 0)
  dq, dk, dv = jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2))(q, k, v)
  for g in (dq, dk, dv):
    assert not np.isnan(g).any()
  np.testing.assert_array_equal(dq[0], 0)
  np.testing.assert_array_equal(dq[1, :2], 0)
  np.testing.assert_array_equal(dk[0], 0)
  np.testing.assert_array_equal(dv[0], 0)


def test_bf16_chunked_close_to_xla():
  q, k, v, fields = random_case(np.random.default_rng(4), 1, 40, 40, 2, 2, 32, "causal")
  cast = lambda x: jnp.asarray(x, jnp.bfloat16)
  spec = spec_from(fields)
  a = attention(cast(q), cast(k), cast(v), mask=spec, implementation="xla_chunked")
  b = attention(q, k, v, mask=spec, implementation="xla")
  assert a.dtype == jnp.bfloat16 and rel_err(a, b) < 2e-2


# ---- errors and routing ---------------------------------------------------------------------------


def test_bad_inputs_raise():
  q = jnp.zeros((1, 4, 4, 8))
  with pytest.raises(ValueError, match="multiple"):
    attention(q, jnp.zeros((1, 4, 3, 8)), jnp.zeros((1, 4, 3, 8)))
  with pytest.raises(ValueError, match="same shape"):
    attention(q, jnp.zeros((1, 4, 2, 8)), jnp.zeros((1, 5, 2, 8)))
  with pytest.raises(ValueError, match="kv_valid_len"):
    attention(q, q, q, mask=MaskSpec(kv_valid_len=jnp.array([1, 2])))
  with pytest.raises(UnsupportedAttention, match="nope"):
    attention(q, q, q, implementation="nope")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU refusals")
@pytest.mark.parametrize("impl", ["triton", "cudnn", "splash"])
def test_accelerator_routes_refuse_on_cpu(impl):
  q = jnp.zeros((1, 4, 2, 16))
  with pytest.raises(UnsupportedAttention, match="GPU|TPU"):
    attention(q, q, q, implementation=impl)


def test_unknown_backend_names_the_choices():
  q = jnp.zeros((1, 4, 2, 16))
  with pytest.raises(UnsupportedAttention, match="attention implementation='flash'.*'xla_chunked'"):
    attention(q, q, q, implementation="flash")
  with pytest.raises(UnsupportedAttention, match="no module 'no_such_module'"):
    attention(q, q, q, implementation="no_such_module:fn")


def test_user_backend_by_module_path():
  """A backend of one's own is named "module:function", like any component (mmjax.registry)."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 5, 2, 8)), jnp.float32) for _ in range(3))
  out = attention(q, k, v, implementation="mmjax.attention.xla:xla_attention")
  np.testing.assert_array_equal(np.asarray(out), np.asarray(attention(q, k, v, implementation="xla")))


def test_cudnn_mask_reasons_name_the_field():
  seg = jnp.zeros((1, 4), jnp.int32)
  assert "segment" in cudnn.cudnn_unsupported_reason(MaskSpec(q_segment_ids=seg, kv_segment_ids=seg))
  assert "prefix_len" in cudnn.cudnn_unsupported_reason(MaskSpec(causal=True, prefix_len=jnp.array([1])))
  assert "causal_offset" in cudnn.cudnn_unsupported_reason(MaskSpec(causal=True, causal_offset=jnp.array([1])))
  assert cudnn.cudnn_unsupported_reason(MaskSpec(causal=True, kv_valid_len=jnp.array([3]))) is None


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU auto table")
def test_auto_on_cpu():
  short = jnp.zeros((1, 128, 1, 8))
  assert dispatch.choose_auto(short, short, None, None) == "xla"
  long = jax.ShapeDtypeStruct((1, 8192, 1, 8), jnp.float32)
  assert dispatch.choose_auto(long, long, None, None) == "xla_chunked"
