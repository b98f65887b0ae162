"""The compiled Triton kernels on a real GPU (jax_triton) vs a float64 reference: forward and
dQ/dK/dV, every dtype, the awkward lengths, GQA/MQA, head dims 32..256, every mask kind, soft-cap
and fully masked rows. Skipped without a CUDA GPU and jax_triton.

Run it in its own process (`pytest tests/test_triton_gpu.py`): a process that imported
mmjax.kernels.interpret (tests/test_triton_kernel.py) runs every Triton kernel interpreted, so this
module skips itself there rather than test the interpreter twice.
"""
import importlib.util
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # tests/ may or may not be a package, depending on who else added files there
  from tests.test_attention import numpy_allowed, reference, rel_err, spec_from
except ImportError:
  from test_attention import numpy_allowed, reference, rel_err, spec_from

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not any(d.platform == "gpu" for d in jax.devices()), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("jax_triton") is None, reason="needs jax_triton"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="Triton is in interpreter mode in this process; run this file alone"),
]

# Relative norm error allowed per input dtype. float32 dots run as TF32 on the tensor cores
# (Triton's default), hence 5e-3 rather than float32 round-off.
TOL = {"float32": 5e-3, "bfloat16": 3e-2, "float16": 1e-2}

CASES = {  # name: (b, sq, skv, hq, hkv, d, mask fields builder, softcap)
    "q1 over 7 keys": (2, 1, 7, 4, 4, 64, lambda r, b, sq, skv: {}, None),
    "7 over 1 key, GQA": (2, 7, 1, 4, 2, 32, lambda r, b, sq, skv: {}, None),
    "cross 257 over 576 padded, MQA, D80": (2, 257, 576, 4, 1, 80,
                                            lambda r, b, sq, skv: dict(kvlen=np.array([300, 576])), None),
    "causal 576, D96": (2, 576, 576, 4, 2, 96, lambda r, b, sq, skv: dict(causal=True), None),
    "prefix-LM 729, D128": (1, 729, 729, 2, 2, 128,
                            lambda r, b, sq, skv: dict(causal=True, prefix=np.array([100])), None),
    "causal 1500, D256": (1, 1500, 1500, 2, 1, 256, lambda r, b, sq, skv: dict(causal=True), None),
    "decode 1 over 1500 cache": (2, 1, 1500, 4, 4, 128,
                                 lambda r, b, sq, skv: dict(causal=True, offset=np.array([1499, 700])), None),
    "sorted segments with empty rows": (2, 300, 200, 4, 4, 64, lambda r, b, sq, skv: dict(
        qseg=np.sort(r.integers(0, 4, (b, sq)), 1), kvseg=np.sort(r.integers(1, 4, (b, skv)), 1)), None),
    "unsorted segments (EMPTY tiles inside a span)": (1, 257, 300, 2, 2, 64, lambda r, b, sq, skv: dict(
        qseg=r.integers(0, 3, (b, sq)), kvseg=r.integers(0, 3, (b, skv))), None),
    "soft-cap, causal with offset": (2, 130, 190, 2, 2, 64,
                                     lambda r, b, sq, skv: dict(causal=True, offset=np.array([60, -5])), 30.0),
}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_gpu_matches_float64(case, dtype):
  from mmjax.attention import attention
  b, sq, skv, hq, hkv, d, make_fields, softcap = CASES[case]
  rng = np.random.default_rng(zlib.crc32(f"{case}/{dtype}".encode()))  # own inputs per case
  fields = make_fields(rng, b, sq, skv)
  spec = spec_from(fields)
  scale = 1.0 / np.sqrt(d)
  q, k, v, dout = (jnp.asarray(rng.standard_normal(s), dtype)
                   for s in ((b, sq, hq, d), (b, skv, hkv, d), (b, skv, hkv, d), (b, sq, hq, d)))

  def loss(q, k, v):
    out = attention(q, k, v, mask=spec, softcap=softcap, implementation="triton")
    return (out.astype(jnp.float32) * dout.astype(jnp.float32)).sum(), out

  (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  allowed = numpy_allowed(b, sq, skv, **fields)
  f64 = [np.asarray(x, np.float64) for x in (q, k, v, dout)]
  jax.config.update("jax_enable_x64", True)
  try:
    with jax.default_device(jax.devices("cpu")[0]):
      ref = np.asarray(reference(*f64[:3], allowed, scale, softcap))
      ref_grads = jax.grad(lambda *a: (reference(*a, allowed, scale, softcap, xp=jnp) * f64[3]).sum(),
                           argnums=(0, 1, 2))(*f64[:3])
  finally:
    jax.config.update("jax_enable_x64", False)

  tol = TOL[dtype]
  errs = {name: rel_err(np.asarray(x, np.float64), np.asarray(r)) for name, x, r in
          zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads))}
  print(case, dtype, {n: f"{e:.1e}" for n, e in errs.items()})
  assert all(e < tol for e in errs.values()), (case, dtype, errs)
  empty_rows = ~allowed.any(-1)  # [b, sq]: must be exactly 0 in the output and in dQ
  if empty_rows.any():
    assert np.all(np.asarray(out, np.float32)[empty_rows] == 0)
    assert np.all(np.asarray(grads[0], np.float32)[empty_rows] == 0)
