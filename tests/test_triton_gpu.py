"""The compiled Triton kernels on a real GPU (jax_triton) vs a float64 reference: forward and
dQ/dK/dV of both backward forms (atomic dQ, the default, and deterministic), every dtype, the
awkward lengths, GQA/MQA, head dims 32..256, every mask kind, soft-cap and fully masked rows.
Skipped without a CUDA GPU and jax_triton.

Every check runs in a child process of its own with TRITON_INTERPRET removed from its environment.
Triton fixes interpreter or compiled mode per process at import, and a pytest process that also
collects tests/test_triton_kernel.py is switched to the interpreter by it, early or late depending
on collection order; a child process is compiled-mode whatever this process did, so the result no
longer depends on which files were collected with this one or in which order. One child per
(case, dtype) runs both backward forms; with pytest-xdist (`-n 8`) eight run at a time.

    python tests/test_triton_gpu.py --case="causal 576, D96" --dtype=bfloat16   # one child, by hand
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:  # tests/ may or may not be a package, depending on who else added files there
  from tests.test_attention import numpy_allowed, reference, rel_err, spec_from
except ImportError:
  from test_attention import numpy_allowed, reference, rel_err, spec_from


def _gpu_available() -> bool:
  import jax  # jax's device list does not depend on Triton's mode

  return any(d.platform == "gpu" for d in jax.devices())


# Relative norm error allowed per input dtype. float32 dots run as TF32x3 on the tensor cores; the
# atomic backward adds dQ in float32 in a varying order, which the bounds leave room for.
TOL = {"float32": 5e-3, "bfloat16": 3e-2, "float16": 1e-2}
FORMS = {"atomic": False, "deterministic": True}  # flash_attention(deterministic=...)

# fmt: off
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
# fmt: on


def check(case: str, dtype: str) -> dict:
  """Child side: {form: {"errors": {out, dq, dk, dv: relative error}, "empty_rows_zero": bool}}.
  The atomic form goes through mmjax.attention's "triton" route (its default backward), the
  deterministic one calls the kernel entry point with deterministic=True."""
  import jax
  import jax.numpy as jnp

  from mmjax.attention import attention
  from mmjax.kernels import triton_call

  b, sq, skv, hq, hkv, d, make_fields, softcap = CASES[case]
  rng = np.random.default_rng(zlib.crc32(f"{case}/{dtype}".encode()))  # own inputs per case
  fields = make_fields(rng, b, sq, skv)
  spec = spec_from(fields)
  scale = 1.0 / np.sqrt(d)
  q, k, v, dout = (
    jnp.asarray(rng.standard_normal(s), dtype)
    for s in ((b, sq, hq, d), (b, skv, hkv, d), (b, skv, hkv, d), (b, sq, hq, d))
  )

  allowed = numpy_allowed(b, sq, skv, **fields)
  f64 = [np.asarray(x, np.float64) for x in (q, k, v, dout)]
  jax.config.update("jax_enable_x64", True)
  try:
    with jax.default_device(jax.devices("cpu")[0]):
      ref = np.asarray(reference(*f64[:3], allowed, scale, softcap))
      ref_grads = jax.grad(
        lambda *a: (reference(*a, allowed, scale, softcap, xp=jnp) * f64[3]).sum(), argnums=(0, 1, 2)
      )(*f64[:3])
  finally:
    jax.config.update("jax_enable_x64", False)

  results = {}
  for form, deterministic in FORMS.items():
    if deterministic:
      fn = lambda q, k, v: triton_call.flash_attention(q, k, v, spec, scale, softcap, deterministic=True)
    else:
      fn = lambda q, k, v: attention(q, k, v, mask=spec, softcap=softcap, implementation="triton")

    def loss(q, k, v, fn=fn):
      out = fn(q, k, v)
      return (out.astype(jnp.float32) * dout.astype(jnp.float32)).sum(), out

    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    errors = {
      name: float(rel_err(np.asarray(x, np.float64), np.asarray(r)))
      if np.isfinite(np.asarray(x, np.float32)).all()
      else float("nan")
      for name, x, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads))
    }
    empty_rows = ~allowed.any(-1)  # [b, sq]: must be exactly 0 in the output and in dQ
    zero = bool(
      np.all(np.asarray(out, np.float32)[empty_rows] == 0) and np.all(np.asarray(grads[0], np.float32)[empty_rows] == 0)
    )
    results[form] = dict(errors=errors, empty_rows=int(empty_rows.sum()), empty_rows_zero=zero)
  return results


def _child_env() -> dict:
  env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # several children share one GPU
  return env


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("jax_triton") is None, reason="needs jax_triton")
@pytest.mark.skipif(not _gpu_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("case", list(CASES))
def test_triton_gpu_matches_float64(case, dtype):
  res = subprocess.run(
    [sys.executable, os.path.abspath(__file__), f"--case={case}", f"--dtype={dtype}"],
    cwd=ROOT,
    env=_child_env(),
    capture_output=True,
    text=True,
    timeout=900,
  )
  lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
  assert res.returncode == 0 and lines, f"child failed (exit {res.returncode}):\n{res.stderr[-4000:]}"
  results = json.loads(lines[-1])
  print(case, dtype, {form: {n: f"{e:.1e}" for n, e in r["errors"].items()} for form, r in results.items()})
  tol = TOL[dtype]
  for form, r in results.items():
    # NaN compares False, so a NaN error fails here.
    assert all(e < tol for e in r["errors"].values()), (case, dtype, form, r["errors"])
    assert r["empty_rows_zero"], (case, dtype, form, f"{r['empty_rows']} fully masked rows not exactly 0")
  assert set(results) == set(FORMS)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="One GPU check in this process (a child of the test).")
  parser.add_argument("--case", required=True, choices=list(CASES))
  parser.add_argument("--dtype", required=True, choices=list(TOL))
  args = parser.parse_args()
  print(json.dumps(check(args.case, args.dtype)))
