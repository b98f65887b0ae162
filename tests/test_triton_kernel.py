"""The Triton flash-attention kernels, run under Triton's interpreter on CPU, vs float64 references.

mmjax.kernels.interpret must be imported before anything imports triton (it switches the process to
interpreter mode), hence the import order below. The compiled kernels are checked by
tests/test_triton_gpu.py (on a GPU) and tests/test_triton_compile.py (compiled for sm_90 on any
machine), both in child processes of their own.
"""

from mmjax.kernels import interpret  # noqa: I001  (must precede any triton import)

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from mmjax.kernels import flash_attention as fa
from mmjax.kernels import triton_call
from mmjax.kernels.flash_attention import Tiling
from mmjax.kernels.mask import TILE_EMPTY, TILE_FULL, MaskSpec, heaviest_first, tile_map, tile_runs

try:  # tests/ may or may not be a package, depending on who else added files there
  from tests.test_attention import numpy_allowed, random_case, reference, rel_err, spec_from
except ImportError:
  from test_attention import numpy_allowed, random_case, reference, rel_err, spec_from


# Jitted: eagerly, each of tile_map's dozens of small ops would compile on its own for every shape.
_tile_map_jit = jax.jit(tile_map, static_argnums=(1, 2, 3, 4, 5))

FORMS = ("atomic", "deterministic")  # the two backward forms (flash_attention's deterministic=False / True)


def check_kernels(
  q, k, v, fields, scale, softcap=None, block_q=16, block_k=16, tol=2e-5, dkdv_blocks=None, dq_blocks=None, forms=FORMS
):
  """Interpreted forward and, per backward form, dQ/dK/dV vs the float64 jax reference, as relative
  norm errors (rel_err fails on NaN). Returns (out, lse, {form: (dq, dk, dv)})."""
  spec = spec_from(fields)
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  allowed = numpy_allowed(b, sq, skv, **fields)
  dout = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
  out, lse = interpret.forward_interpret(q, k, v, spec, scale, softcap, block_q, block_k)
  grads = {
    form: interpret.backward_interpret(
      q,
      k,
      v,
      out,
      lse,
      dout,
      spec,
      scale,
      softcap,
      block_q,
      block_k,
      dkdv_blocks,
      dq_blocks,
      deterministic=form == "deterministic",
    )
    for form in forms
  }
  jax.config.update("jax_enable_x64", True)
  try:
    f64 = [x.astype(np.float64) for x in (q, k, v)]
    ref = np.asarray(reference(*f64, allowed, scale, softcap))
    ref_grads = jax.jit(
      jax.grad(lambda *a: (reference(*a, allowed, scale, softcap, xp=jnp) * dout).sum(), argnums=(0, 1, 2))
    )(*f64)
  finally:
    jax.config.update("jax_enable_x64", False)
  assert rel_err(out, ref) < tol
  for form, form_grads in grads.items():
    for name, g, r in zip(("dq", "dk", "dv"), form_grads, ref_grads):
      assert g.dtype == q.dtype
      assert rel_err(g, r) < tol, (form, name, rel_err(g, r))
  return out, lse, grads


@pytest.mark.parametrize(
  "sq,skv,kind,blocks,forms",
  [
    (1, 7, "none", (16, 16), FORMS),
    (7, 1, "causal", (16, 16), FORMS),
    (257, 576, "segments", (64, 64), FORMS),
    (576, 257, "all", (64, 32), ("atomic",)),
    (729, 257, "causal", (64, 64), ("deterministic",)),
    (1500, 576, "causal", (128, 64), ("atomic",)),
  ],
)
def test_lengths(sq, skv, kind, blocks, forms):
  q, k, v, fields = random_case(np.random.default_rng(sq + skv), 1, sq, skv, 1, 1, 32, kind)
  check_kernels(q, k, v, fields, 0.2, block_q=blocks[0], block_k=blocks[1], forms=forms)


@pytest.mark.parametrize(
  "fwd,dkdv,dq",
  [
    ((16, 32), (32, 16), (16, 64)),
    ((32, 16), (16, 64), (64, 16)),
  ],
)
def test_non_square_tilings_every_kernel(fwd, dkdv, dq):
  """Each kernel reads the loop bounds of its own tiling; block_q != block_k in all three. (These
  failed to compile on a GPU before the loop-carried `_` fix, which the interpreter cannot see:
  tests/test_triton_compile.py compiles them.)"""
  q, k, v, fields = random_case(np.random.default_rng(5), 2, 45, 70, 2, 1, 32, "all")
  check_kernels(q, k, v, fields, 0.2, block_q=fwd[0], block_k=fwd[1], dkdv_blocks=dkdv, dq_blocks=dq)


def test_gqa_head_dim_80_softcap():
  q, k, v, fields = random_case(np.random.default_rng(5), 2, 19, 23, 4, 2, 80, "all")
  check_kernels(q, k, v, fields, 0.1, softcap=3.0)


def test_mqa_head_dim_96():
  q, k, v, fields = random_case(np.random.default_rng(6), 1, 33, 18, 3, 1, 96, "causal")
  check_kernels(q, k, v, fields, 0.1)


def test_unsorted_segments_full_tiles_outside_the_run():
  """Segment ids constant per 16-block but alternating: FULL tiles in a row are not contiguous, so
  the head and tail loops meet FULL and EMPTY tiles, which they must mask like PARTIAL ones."""
  rng = np.random.default_rng(12)
  q, k, v, _ = random_case(rng, 1, 80, 96, 2, 2, 32, "none")
  qseg = np.repeat(np.array([[0, 1, 0, 0, 1]]), 16, axis=1)
  kvseg = np.repeat(np.array([[0, 0, 1, 0, 1, 1]]), 16, axis=1)
  fields = dict(qseg=qseg, kvseg=kvseg)
  tiles = np.asarray(_tile_map_jit(spec_from(fields), 1, 80, 96, 16, 16))
  runs = np.asarray(jax.jit(tile_runs)(jnp.asarray(tiles))[0])
  heads_and_tails = [tiles[0, i, list(range(r[0], r[1])) + list(range(r[2], r[3]))] for i, r in enumerate(runs[0])]
  assert any((t == TILE_FULL).any() for t in heads_and_tails) and any((t == TILE_EMPTY).any() for t in heads_and_tails)
  check_kernels(q, k, v, fields, 0.2)


@settings(max_examples=5, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  sq=st.integers(1, 40),
  skv=st.integers(1, 40),
  kind=st.sampled_from(["none", "causal", "segments", "all"]),
  heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]),
  softcap=st.sampled_from([None, 4.0]),
  form=st.sampled_from(FORMS),
)
def test_random_masks(seed, sq, skv, kind, heads, softcap, form):
  q, k, v, fields = random_case(np.random.default_rng(seed), 2, sq, skv, heads[0], heads[1], 32, kind)
  check_kernels(q, k, v, fields, 0.25, softcap=softcap, forms=(form,))


def test_fully_masked_rows_zero_output_and_grads():
  """Example 0 has no valid key; example 1's causal offset -5 leaves its first 5 rows empty, GQA."""
  q, k, v, _ = random_case(np.random.default_rng(7), 2, 20, 18, 4, 2, 32, "none")
  fields = dict(causal=True, offset=np.array([0, -5]), kvlen=np.array([0, 18]))
  out, lse, grads = check_kernels(q, k, v, fields, 0.2)
  assert np.isinf(lse[0]).all() and np.isinf(lse[1, :, :5]).all() and np.isfinite(lse[1, :, 5:]).all()
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1, :5], 0)
  for dq, dk, dv in grads.values():
    np.testing.assert_array_equal(dq[0], 0)
    np.testing.assert_array_equal(dq[1, :5], 0)
    np.testing.assert_array_equal(dk[0], 0)
    np.testing.assert_array_equal(dv[0], 0)
    assert np.abs(dq[1, 5:]).min(axis=-1).max() > 0  # the other rows did get gradients


def test_fp16_inputs():
  q, k, v, fields = random_case(np.random.default_rng(8), 1, 24, 20, 2, 2, 32, "causal")
  h = [x.astype(np.float16) for x in (q, k, v)]
  out, _ = interpret.forward_interpret(*h, spec_from(fields), 0.2)
  ref = reference(
    q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), numpy_allowed(1, 24, 20, **fields), 0.2
  )
  assert out.dtype == np.float16 and rel_err(out, ref) < 2e-3


@pytest.mark.parametrize("deterministic", [False, True])
def test_custom_vjp_wiring_through_jax_grad(deterministic):
  """jax.grad through the same custom_vjp the GPU path uses, launching interpreted kernels."""
  q, k, v, fields = random_case(np.random.default_rng(10), 2, 21, 17, 4, 2, 32, "all")
  spec = spec_from(fields)
  dout = np.random.default_rng(11).standard_normal(q.shape).astype(np.float32)
  f = lambda *a: interpret.flash_attention_interpret_callback_for_tests(*a, spec, 0.2, 2.0, deterministic=deterministic)
  r = lambda *a: IMPLEMENTATIONS_XLA(*a, spec, 0.2, 2.0)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda *a: (fn(*a) * dout).sum(), argnums=(0, 1, 2)))
  (val, grads), (rval, rgrads) = loss(f)(q, k, v), loss(r)(q, k, v)
  assert abs(val - rval) < 1e-3 * abs(rval) + 1e-3
  for g, rg in zip(grads, rgrads):
    assert rel_err(g, rg) < 1e-5


def IMPLEMENTATIONS_XLA(*args):
  from mmjax.attention.xla import xla_attention

  return xla_attention(*args)


def test_kernel_rejects_bad_config():
  q = np.zeros((1, 4, 1, 8), np.float32)
  with pytest.raises(ValueError, match="head dim"):
    interpret.forward_interpret(q, q, q)
  q = np.zeros((1, 4, 1, 32), np.float32)
  with pytest.raises(ValueError, match="block_q"):
    interpret.forward_interpret(q, q, q, block_q=24)
  with pytest.raises(ValueError, match="dK/dV block_k"):
    triton_call.prepare(q, q, None, None, None, None, Tiling(block_q=32, block_k=48))
  with pytest.raises(ValueError, match="not both"):
    triton_call.backward_tilings(Tiling(), Tiling(), None)


# ---- loop bounds, launch order, launch recipes (no kernel runs) -----------------------------------


@settings(max_examples=6, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  sq=st.integers(1, 70),
  skv=st.integers(1, 70),
  bq=st.sampled_from([8, 16]),
  bk=st.sampled_from([8, 16]),
  kind=st.sampled_from(["none", "causal", "segments", "all"]),
)
def test_tile_runs(seed, sq, skv, bq, bk, kind):
  """Each row/column's (first, run_start, run_end, last + 1): the run holds only FULL tiles, the
  span every non-EMPTY tile; with contiguous FULL tiles (every kind here) none is left outside."""
  fields = random_case(np.random.default_rng(seed), 2, sq, skv, 1, 1, 1, kind)[3]
  tiles = np.asarray(_tile_map_jit(spec_from(fields), 2, sq, skv, bq, bk))
  rows, cols = (np.asarray(x) for x in jax.jit(tile_runs)(jnp.asarray(tiles)))
  assert rows.shape == tiles.shape[:2] + (4,) and cols.shape == (2, tiles.shape[2], 4) and rows.dtype == np.int32
  for grid, runs in ((tiles, rows), (tiles.transpose(0, 2, 1), cols)):
    for b in range(grid.shape[0]):
      for i in range(grid.shape[1]):
        first, run_lo, run_hi, end = runs[b, i]
        line = grid[b, i]
        assert 0 <= first <= run_lo <= run_hi <= end <= len(line)
        assert (line[run_lo:run_hi] == TILE_FULL).all()
        assert (line[:first] == TILE_EMPTY).all() and (line[end:] == TILE_EMPTY).all()
        full = np.flatnonzero(line == TILE_FULL)
        assert run_hi - run_lo == len(full), (line, runs[b, i])  # contiguous FULL tiles: all in the run


def test_heaviest_first_orders_causal_blocks():
  order = jax.jit(lambda spec: [heaviest_first(r) for r in tile_runs(tile_map(spec, 2, 64, 64, 16, 16))])
  rows, cols = order(MaskSpec(causal=True))
  assert list(np.asarray(rows)) == [3, 2, 1, 0]  # the last query block sees most keys
  assert list(np.asarray(cols)) == [0, 1, 2, 3]  # the first key block, most queries
  assert list(np.asarray(order(MaskSpec())[0])) == [0, 1, 2, 3]  # ties keep index order


class _Abstract:
  """Shape and dtype only: what the launch recipes read of an array."""

  def __init__(self, shape, dtype):
    self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)

  def astype(self, dtype):
    return _Abstract(self.shape, dtype)


def _recorded_launches(deterministic, b=3, h=5, hkv=5):
  """(kernel name, grid, tiling, zeroed, ATOMIC_DQ) of every launch of forward + backward; nothing
  is allocated or run."""
  launches = []

  def launch(kernel, grid, operands, outputs, meta, tiling, zeroed=()):
    launches.append((kernel.__name__, grid, tiling, tuple(zeroed), meta.get("ATOMIC_DQ")))
    return [_Abstract(shape, dtype) for shape, dtype in outputs]

  q = _Abstract((b, 100, h, 64), np.float32)
  kv = _Abstract((b, 70, hkv, 64), np.float32)
  cfg = fa.KernelConfig(
    0.1,
    0.0,
    True,
    False,
    False,
    False,
    fwd=Tiling(32, 64),
    dkdv=Tiling(16, 64),
    dq=Tiling(64, 16),
    deterministic=deterministic,
  )
  arrays = fa.MaskArrays(*[None] * len(fa.MaskArrays._fields))  # operands are not looked at here
  out, lse = fa.forward(launch, q, kv, kv, arrays, cfg)
  fa.backward(launch, q, kv, kv, out, lse, q, arrays, cfg)
  return launches


def test_launch_recipes_one_grid_axis_heads_fastest_and_backward_forms():
  atomic = _recorded_launches(False)
  assert [a[0] for a in atomic] == ["_fwd_kernel", "_bwd_delta_kernel", "_bwd_dkdv_kernel"]
  assert atomic[0][1] == (4 * 3 * 5,)  # ceil(100 / 32) query blocks x B x H, all on axis 0
  assert atomic[2][1] == (2 * 3 * 5,) and atomic[2][3] == (2,) and atomic[2][4] is True  # zeroed float32 dQ
  determ = _recorded_launches(True)
  # The dQ kernel runs first and produces delta for the dK/dV kernel: no pre-pass.
  assert [a[0] for a in determ] == ["_fwd_kernel", "_bwd_dq_kernel", "_bwd_dkdv_kernel"]
  assert determ[1][1] == (2 * 3 * 5,) and determ[2][3] == () and determ[2][4] is False
  # B * H far past the 65,535 that grid axis 1 allowed.
  assert _recorded_launches(False, b=300, h=300, hkv=300)[0][1] == (4 * 300 * 300,)


def test_default_deterministic_follows_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_autotune_level=0")
  assert triton_call.default_deterministic() is False
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0")
  assert triton_call.default_deterministic() is True
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
  assert triton_call.default_deterministic() is False


def test_tilings_fit_shared_memory():
  from mmjax.kernels.triton_call import KERNELS, SHARED_MEMORY_BUDGET, fit_tiling, shared_memory_estimate

  for kernel in KERNELS:
    for d in (32, 64, 80, 96, 128, 256):
      for itemsize in (2, 4):
        for stages in (2, 3, 4):
          base = Tiling(block_q=128, block_k=128, num_stages=stages)
          t = fit_tiling(base, d, itemsize, kernel)
          assert (
            shared_memory_estimate(kernel, t, d, itemsize) <= SHARED_MEMORY_BUDGET or t.block_q == t.block_k == 16
          ), (kernel, d, itemsize, stages, t)
  # The backward's formula is its own: the dK/dV kernel keeps two key tiles and streams queries,
  # so its query block is the one halved.
  t = fit_tiling(Tiling(block_q=128, block_k=128, num_stages=3), 256, 2, "dkdv")
  assert t.block_k >= 64 and t.block_q == 16
  t = fit_tiling(Tiling(block_q=128, block_k=128, num_stages=3), 256, 2, "fwd")
  assert t.block_q == 128 and t.block_k < 128
  # 16-bit inputs take their table row as it is (each row fits); float32 is fitted down.
  for d in (16, 64, 80, 128, 256):
    table = {k: next(t for bound, t in triton_call.DEFAULT_TILINGS[k] if fa.block_d(d) <= bound) for k in KERNELS}
    assert triton_call.default_tilings(d, np.dtype("float16")) == table
    f32 = triton_call.default_tilings(d, np.dtype("float32"))
    assert all(
      shared_memory_estimate(k, f32[k], d, 4) <= SHARED_MEMORY_BUDGET or f32[k].block_q == f32[k].block_k == 16
      for k in KERNELS
    )
  # Non-square backward tilings are accepted.
  q = np.zeros((1, 4, 1, 32), np.float32)
  cfg, _ = triton_call.prepare(q, q, None, None, None, None, Tiling(block_q=32, block_k=64), Tiling(64, 16))
  assert (cfg.dkdv.block_q, cfg.dkdv.block_k, cfg.dq.block_q, cfg.dq.block_k) == (32, 64, 64, 16)
