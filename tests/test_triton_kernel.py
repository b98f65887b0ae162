"""The Triton flash-attention kernels, run under Triton's interpreter on CPU, vs float64 references.

mmjax.kernels.interpret must be imported before anything imports triton (it switches the process to
interpreter mode), hence the import order below. True-GPU checks run in a subprocess so they compile
real kernels even though this process is in interpreter mode.
"""
import os
import subprocess
import sys

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


def check_kernels(q, k, v, fields, scale, softcap=None, block_q=16, block_k=16, tol=2e-5):
  """Interpreted forward and dQ/dK/dV vs float64 jax reference; returns the outputs."""
  spec = spec_from(fields)
  b, sq, skv = q.shape[0], q.shape[1], k.shape[1]
  allowed = numpy_allowed(b, sq, skv, **fields)
  dout = np.random.default_rng(9).standard_normal(q.shape).astype(np.float32)
  out, lse = interpret.forward_interpret(q, k, v, spec, scale, softcap, block_q, block_k)
  grads = interpret.backward_interpret(q, k, v, out, lse, dout, spec, scale, softcap, block_q, block_k)
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


_GPU_SCRIPT = r"""
import numpy as np, jax, jax.numpy as jnp
from mmjax.attention import attention, MaskSpec
rng = np.random.default_rng(0)
for dtype, tol in ((jnp.float32, 2e-2), (jnp.bfloat16, 3e-2)):
  q = jnp.asarray(rng.standard_normal((2, 300, 4, 80)), dtype)
  k = jnp.asarray(rng.standard_normal((2, 257, 2, 80)), dtype)
  spec = MaskSpec(causal=True, causal_offset=jnp.array([0, 40]), kv_valid_len=jnp.array([200, 257]))
  f = lambda impl: lambda q, k: (attention(q, k, k, mask=spec, implementation=impl).astype(jnp.float32) ** 2).sum()
  for a, b in zip(jax.grad(f("triton"), (0, 1))(q, k), jax.grad(f("xla"), (0, 1))(q, k)):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert not np.isnan(a).any() and np.linalg.norm(a - b) / np.linalg.norm(b) < tol
print("GPU OK")
"""


@pytest.mark.gpu
@pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()), reason="needs a CUDA GPU")
def test_triton_on_gpu_matches_xla():
  env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
  res = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], env=env, capture_output=True, text=True)
  assert res.returncode == 0 and "GPU OK" in res.stdout, res.stderr[-3000:]
