"""Side-by-side timing of every available attention implementation on the same inputs.

  python kernels/benchmarks/attention_benchmark.py            # GPU shapes (or tiny CPU run if no GPU)
  python kernels/benchmarks/attention_benchmark.py --cpu-tiny # tiny shapes: xla, xla_chunked,
                                                              # interpreted triton
  python kernels/benchmarks/attention_benchmark.py --triton_configs=64x64w4s3/16x128w8s2/64x64w4s2 --cases=cross
      # one triton row per kernel config (block_q x block_k, warps, stages; forward/backward or
      # forward/dK-dV/dQ when they differ); cases by substring; --deterministic: two-kernel backward

TFLOP/s follow the FlashAttention convention: forward = 4 * B * H * (allowed q-k pairs) * D, with
only unmasked pairs counted for sparse masks; forward+backward = 3.5 x forward. Timing is device
time: `reps` async dispatches per measurement, block_until_ready once at the end, median of rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np


def timed_rounds(fn, args, reps, rounds) -> list[float]:
  """Seconds per call in each of `rounds` rounds of `reps` async dispatches (after a warm-up call)."""
  import jax

  jax.block_until_ready(fn(*args))  # compile + warm up
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    out = None
    for _ in range(reps):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / reps)
  return times


def _timed(fn, args, reps, rounds):
  return statistics.median(timed_rounds(fn, args, reps, rounds))


def _cases(tiny: bool):
  """(name, B, Sq, Skv, H, D, mask factory)."""
  import jax.numpy as jnp

  from mmjax.kernels.mask import MaskSpec

  def media_local(b, sq, skv):
    # Flamingo: text chunk i attends only to the image tokens of image i (segment ids).
    n_img = 4
    q_ids = jnp.broadcast_to(jnp.arange(sq) * n_img // sq, (b, sq)).astype(jnp.int32)
    kv_ids = jnp.broadcast_to(jnp.arange(skv) * n_img // skv, (b, skv)).astype(jnp.int32)
    return MaskSpec(q_segment_ids=q_ids, kv_segment_ids=kv_ids)

  causal = lambda b, sq, skv: MaskSpec(causal=True)
  full = lambda b, sq, skv: None
  if tiny:
    return [
      ("causal tiny", 1, 128, 128, 2, 64, causal),
      ("cross tiny", 2, 64, 36, 2, 64, full),
      ("media-local tiny", 1, 128, 64, 2, 64, media_local),
    ]
  return [
    ("causal 4k", 1, 4096, 4096, 16, 128, causal),
    ("causal 16k", 1, 16384, 16384, 16, 128, causal),
    ("cross B16 1024x576", 16, 1024, 576, 16, 128, full),
    ("media-local 4096x1024", 2, 4096, 1024, 16, 128, media_local),
    ("causal D64 B8 2048", 8, 2048, 2048, 16, 64, causal),
  ]


def parse_triton_config(text: str) -> dict:
  """'128x64w8s3' (every kernel), '64x64w4s3/32x128w8s2' (forward/backward) or
  '64x64w4s3/16x128w8s2/64x64w4s2' (forward/dK-dV/dQ) -> flash_attention keyword arguments
  (fwd= and bwd=, or fwd=, dkdv= and dq=)."""
  import re

  from mmjax.kernels.flash_attention import Tiling

  tilings = []
  for part in text.strip().split("/"):
    m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", part)
    if not m:
      raise ValueError(
        f"--triton_configs entry {text!r} is not of the form 128x64w8s3, 64x64w4s3/32x128w8s2 "
        "or 64x64w4s3/16x128w8s2/64x64w4s2 (block_q x block_k, warps, stages; "
        "forward[/backward] or forward/dK-dV/dQ)."
      )
    bq, bk, w, st = map(int, m.groups())
    tilings.append(Tiling(block_q=bq, block_k=bk, num_warps=w, num_stages=st))
  if len(tilings) > 3:
    raise ValueError(f"--triton_configs entry {text!r}: at most two '/' (forward/dK-dV/dQ).")
  if len(tilings) == 3:
    return dict(fwd=tilings[0], dkdv=tilings[1], dq=tilings[2])
  return dict(fwd=tilings[0], bwd=tilings[-1])


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-tiny", action="store_true")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument(
    "--triton_configs",
    default="",
    help="comma-separated kernel configs, e.g. 64x64w4s3/64x64w4s2,128x64w8s3; one triton row "
    "each (default: one row with the kernel's default config)",
  )
  parser.add_argument("--cases", default="", help="comma-separated substrings: only matching cases, in this order")
  parser.add_argument("--impls", default="", help="comma-separated implementations to run (default: all)")
  parser.add_argument(
    "--deterministic",
    action="store_true",
    help="triton rows use the deterministic two-kernel backward (default: the kernel's "
    "default, the atomic-dQ backward)",
  )
  args = parser.parse_args(argv)
  import jax

  tiny = args.cpu_tiny or jax.default_backend() != "gpu"
  if tiny:
    from mmjax.kernels import interpret  # before triton is imported elsewhere

    args.rounds, args.reps = 3, 2
  triton_configs = {c: parse_triton_config(c) for c in filter(None, args.triton_configs.split(","))}
  import jax.numpy as jnp

  from mmjax.attention import UnsupportedAttention, backend
  from mmjax.attention.xla import xla_attention

  dtype = jnp.float32 if tiny else jnp.bfloat16
  print(
    f"jax {jax.__version__}, backend {jax.default_backend()}, dtype {jnp.dtype(dtype).name}, "
    f"rounds {args.rounds} x reps {args.reps}"
  )
  triton_rows = [f"triton {c}" for c in triton_configs] or ["triton"]
  if not triton_configs:
    triton_configs[""] = {}
  impls = ["xla", "xla_chunked"] + ([] if tiny else ["cudnn", "cudnn_dense"] + triton_rows)
  if tiny:
    impls.append("triton_interpret")
  if args.impls:
    wanted = set(args.impls.split(","))
    unknown = wanted - {i.split(" ")[0] for i in impls} - set(impls)
    if unknown:
      raise SystemExit(f"--impls: {sorted(unknown)} not among {impls} on this backend.")
    impls = [i for i in impls if i in wanted or i.split(" ")[0] in wanted]
  print(
    f"{'case':24s} {'impl':22s} {'fwd ms':>9s} {'fwd TF/s':>9s} {'f+b ms':>9s} "
    f"{'f+b TF/s':>9s} {'fwd x':>6s} {'f+b x':>6s} {'rel err':>9s}"
  )
  print(
    "(fwd x, f+b x: the baseline's time / this time; the baseline is cudnn, or cudnn_dense where "
    "cudnn cannot express the mask)"
  )
  rng = np.random.default_rng(0)
  cases = _cases(tiny)
  if args.cases:  # in the order asked for (a dict keeps each case once, at its first match)
    words = [w.strip() for w in args.cases.split(",")]
    cases = list({c[0]: c for w in words for c in cases if w in c[0]}.values())
    if not cases:
      raise SystemExit(f"--cases={args.cases!r} matches none of {[c[0] for c in _cases(tiny)]}.")
  for name, b, sq, skv, h, d, make_mask in cases:
    q = jnp.asarray(rng.standard_normal((b, sq, h, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, skv, h, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, skv, h, d)), dtype)
    mask = make_mask(b, sq, skv)
    scale = 1.0 / np.sqrt(d)
    allowed = float(mask.dense(b, sq, skv).sum()) / b if mask is not None else sq * skv
    fwd_flops = 4.0 * b * h * allowed * d
    # Reference: XLA in float32 on the same (rounded) inputs; skipped where the logits get too big.
    f32 = lambda x: x.astype(jnp.float32)
    with jax.default_matmul_precision("highest"):
      ref = (
        None
        if sq * skv > 4096 * 4096
        else jax.jit(lambda q, k, v: xla_attention(f32(q), f32(k), f32(v), mask, scale, None))(q, k, v)
      )
    base = None  # (fwd, f+b) seconds of cudnn, else cudnn_dense
    for impl in impls:
      if impl == "xla" and sq * skv > 4096 * 4096:
        print(f"{name:24s} {impl:22s} skipped: the logits alone would take B*H*Sq*Skv memory")
        continue
      if impl == "triton_interpret":
        fn = lambda q, k, v: interpret.flash_attention_interpret_callback_for_tests(q, k, v, mask, scale)
      elif impl == "triton" or impl.startswith("triton "):
        from mmjax.kernels import triton_call

        kw = dict(triton_configs[impl[len("triton ") :]], deterministic=True if args.deterministic else None)
        fn = lambda q, k, v, kw=kw: triton_call.flash_attention(q, k, v, mask, scale, None, **kw)
      elif impl == "cudnn_dense":
        dense = None if mask is None else mask.dense(b, sq, skv)[:, None]
        fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale, mask=dense, implementation="cudnn")
      else:
        fn = lambda q, k, v, impl=impl: backend(impl)(q, k, v, mask, scale, None)
      fwd = jax.jit(fn)
      fb = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
      try:
        t_f = _timed(fwd, (q, k, v), args.reps, args.rounds)
        t_fb = _timed(fb, (q, k, v), args.reps, args.rounds)
        out = fwd(q, k, v)
      except UnsupportedAttention as e:
        print(f"{name:24s} {impl:22s} skipped: {str(e).splitlines()[0][:90]}")
        continue
      except Exception as e:  # noqa: BLE001 - a compile error or OOM in one row must not end the run
        msg = " ".join(str(e).split())
        msg = msg if len(msg) < 400 else msg[:150] + " ... " + msg[-250:]  # the cause is at the end
        print(f"{name:24s} {impl:22s} FAILED: {type(e).__name__}: {msg}")
        continue
      if impl == "cudnn" or (impl == "cudnn_dense" and base is None):
        base = (t_f, t_fb)
      err = (
        float("nan")
        if ref is None
        else float(jnp.linalg.norm((out - ref).astype(jnp.float32)) / jnp.linalg.norm(ref.astype(jnp.float32)))
      )
      ratio = f"{base[0] / t_f:6.2f} {base[1] / t_fb:6.2f}" if base else f"{'-':>6s} {'-':>6s}"
      print(
        f"{name:24s} {impl:22s} {t_f * 1e3:9.3f} {fwd_flops / t_f / 1e12:9.4f} {t_fb * 1e3:9.3f} "
        f"{3.5 * fwd_flops / t_fb / 1e12:9.4f} {ratio} {err:9.2e}"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
