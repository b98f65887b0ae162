"""The Triton flash-attention kernels, run under Triton's interpreter on CPU, vs float64 references.

mmjax.kernels.interpret must be imported before anything imports triton (it switches the process to
interpreter mode), hence the import order below. The compiled kernels on a real GPU are checked by
tests/test_triton_gpu.py, which must run in a process of its own.
"""
from mmjax.kernels import interpret  # noqa: I001  (must precede any triton import)

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

try:  # tests/ may or may not be a package, depending on who else added files there
  from tests.test_attention import numpy_allowed, random_case, reference, rel_err, spec_from
except ImportError:
  from test_attention import numpy_allowed, random_case, reference, rel_err, spec_from


def check_kernels(q, k, v, fields, scale, softcap=None, block_q=16, block_k=16, tol=2e-5, bwd_blocks=None):
  """Interpreted forward and dQ/dK/dV vs float64 jax reference; returns the outputs."""
  spec = spec_from(fields)
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  allowed = numpy_allowed(b, sq, skv, **fields)
  dout = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
  out, lse = interpret.forward_interpret(q, k, v, spec, scale, softcap, block_q, block_k)
  grads = interpret.backward_interpret(q, k, v, out, lse, dout, spec, scale, softcap, block_q, block_k,
                                       bwd_blocks)
  jax.config.update("jax_enable_x64", True)
  try:
    f64 = [x.astype(np.float64) for x in (q, k, v)]
    ref = np.asarray(reference(*f64, allowed, scale, softcap))
    ref_grads = jax.grad(lambda *a: (reference(*a, allowed, scale, softcap, xp=jnp) * dout).sum(),
                         argnums=(0, 1, 2))(*f64)
  finally:
    jax.config.update("jax_enable_x64", False)
  assert rel_err(out, ref) < tol
  for g, r in zip(grads, ref_grads):
    assert rel_err(g, r) < tol
  return out, lse, grads


@pytest.mark.parametrize("sq,skv,kind,blocks", [
    (1, 7, "none", (16, 16)),
    (7, 1, "causal", (16, 16)),
    (257, 576, "segments", (64, 64)),
    (729, 257, "causal", (64, 64)),
    (1500, 576, "causal", (128, 64)),
])
def test_lengths(sq, skv, kind, blocks):
  q, k, v, fields = random_case(np.random.default_rng(sq + skv), 1, sq, skv, 1, 1, 32, kind)
  check_kernels(q, k, v, fields, 0.2, block_q=blocks[0], block_k=blocks[1])


def test_backward_with_other_blocks_than_forward():
  """The backward reads its own tile map: forward 16x32 tiles, backward 32x32."""
  q, k, v, fields = random_case(np.random.default_rng(5), 2, 45, 70, 2, 1, 32, "all")
  check_kernels(q, k, v, fields, 0.2, block_q=16, block_k=32, bwd_blocks=(32, 32))


def test_gqa_head_dim_80_softcap():
  q, k, v, fields = random_case(np.random.default_rng(5), 2, 19, 23, 4, 2, 80, "all")
  check_kernels(q, k, v, fields, 0.1, softcap=3.0)


def test_mqa_head_dim_96():
  q, k, v, fields = random_case(np.random.default_rng(6), 1, 33, 18, 3, 1, 96, "causal")
  check_kernels(q, k, v, fields, 0.1)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), sq=st.integers(1, 40), skv=st.integers(1, 40),
       kind=st.sampled_from(["none", "causal", "segments", "all"]),
       heads=st.sampled_from([(1, 1), (2, 1), (2, 2)]), softcap=st.sampled_from([None, 4.0]))
def test_random_masks(seed, sq, skv, kind, heads, softcap):
  q, k, v, fields = random_case(np.random.default_rng(seed), 2, sq, skv, heads[0], heads[1], 32, kind)
  check_kernels(q, k, v, fields, 0.25, softcap=softcap)


def test_fully_masked_rows_zero_output_and_grads():
  q, k, v, _ = random_case(np.random.default_rng(7), 2, 20, 18, 2, 1, 32, "none")
  fields = dict(causal=True, offset=np.array([0, -5]), kvlen=np.array([0, 18]))
  out, lse, (dq, dk, dv) = check_kernels(q, k, v, fields, 0.2)
  assert np.isinf(lse[0]).all() and np.isinf(lse[1, :, :5]).all()
  np.testing.assert_array_equal(out[0], 0)
  np.testing.assert_array_equal(out[1, :5], 0)
  np.testing.assert_array_equal(dq[0], 0)
  np.testing.assert_array_equal(dk[0], 0)
  np.testing.assert_array_equal(dv[0], 0)


def test_fp16_inputs():
  q, k, v, fields = random_case(np.random.default_rng(8), 1, 24, 20, 2, 2, 32, "causal")
  h = [x.astype(np.float16) for x in (q, k, v)]
  out, _ = interpret.forward_interpret(*h, spec_from(fields), 0.2)
  ref = reference(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                  numpy_allowed(1, 24, 20, **fields), 0.2)
  assert out.dtype == np.float16 and rel_err(out, ref) < 2e-3


def test_custom_vjp_wiring_through_jax_grad():
  """jax.grad through the same custom_vjp the GPU path uses, launching interpreted kernels."""
  q, k, v, fields = random_case(np.random.default_rng(10), 2, 21, 17, 4, 2, 32, "all")
  spec = spec_from(fields)
  dout = np.random.default_rng(11).standard_normal(q.shape).astype(np.float32)
  f = lambda *a: interpret.flash_attention_interpret_callback_for_tests(*a, spec, 0.2, 2.0)
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


def test_tilings_fit_shared_memory_and_backward_stays_square():
  from mmjax.kernels.flash_attention import Tiling
  from mmjax.kernels import triton_call
  from mmjax.kernels.triton_call import SHARED_MEMORY_BUDGET, fit_tiling
  for d in (32, 64, 80, 96, 128, 256):
    for itemsize in (2, 4):
      for stages in (2, 3, 4):
        base = Tiling(block_q=64, block_k=64, num_stages=stages)
        for square in (False, True):
          t = fit_tiling(base, d, itemsize, square)
          row = (1 << (d - 1).bit_length()) * itemsize * (2 if itemsize == 4 else 1)
          assert (t.block_q + 2 * stages * t.block_k) * row <= SHARED_MEMORY_BUDGET or t.block_q == 16
          assert not square or t.block_q == t.block_k
  # bf16 D=128 keeps the measured defaults; float32 D=128 (295 KB asked on an H100) is cut down.
  assert (fit_tiling(Tiling(num_stages=2), 128, 2).block_q, fit_tiling(Tiling(num_stages=2), 128, 2).block_k) == (64, 64)
  assert fit_tiling(Tiling(num_stages=2), 128, 4, square=True).block_q == 32
  q = np.zeros((1, 4, 1, 32), np.float32)
  with pytest.raises(ValueError, match="square"):
    triton_call.prepare(q, q, None, None, None, None, Tiling(block_q=32, block_k=64))
