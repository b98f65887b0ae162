"""Side-by-side timing of every available attention implementation on the same inputs.

  python kernels/benchmarks/attention_benchmark.py            # GPU shapes (or tiny CPU run if no GPU)
  python kernels/benchmarks/attention_benchmark.py --cpu-tiny # tiny shapes: xla, xla_chunked,
                                                              # interpreted triton

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


def _timed(fn, args, reps, rounds):
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
  return statistics.median(times)


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
    return [("causal tiny", 1, 128, 128, 2, 64, causal), ("cross tiny", 2, 64, 36, 2, 64, full),
            ("media-local tiny", 1, 128, 64, 2, 64, media_local)]
  return [("causal 4k", 1, 4096, 4096, 16, 128, causal), ("causal 16k", 1, 16384, 16384, 16, 128, causal),
          ("cross B16 1024x576", 16, 1024, 576, 16, 128, full),
          ("media-local 4096x1024", 2, 4096, 1024, 16, 128, media_local),
          ("causal D64 B8 2048", 8, 2048, 2048, 16, 64, causal)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cpu-tiny", action="store_true")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--reps", type=int, default=10)
  args = parser.parse_args(argv)
  import jax
  tiny = args.cpu_tiny or jax.default_backend() != "gpu"
  if tiny:
    from mmjax.kernels import interpret  # before triton is imported elsewhere
    args.rounds, args.reps = 3, 2
  import jax.numpy as jnp
  from mmjax.attention import IMPLEMENTATIONS, UnsupportedAttention
  from mmjax.attention.xla import xla_attention

  dtype = jnp.float32 if tiny else jnp.bfloat16
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, dtype {jnp.dtype(dtype).name}, "
        f"rounds {args.rounds} x reps {args.reps}")
  impls = ["xla", "xla_chunked"] + ([] if tiny else ["triton", "cudnn", "cudnn_dense"])
  if tiny:
    impls.append("triton_interpret")
  print(f"{'case':24s} {'impl':16s} {'fwd ms':>9s} {'fwd TF/s':>9s} {'f+b ms':>9s} "
        f"{'f+b TF/s':>9s} {'vs cudnn':>8s} {'rel err':>9s}")
  rng = np.random.default_rng(0)
  for name, b, sq, skv, h, d, make_mask in _cases(tiny):
    q = jnp.asarray(rng.standard_normal((b, sq, h, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, skv, h, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, skv, h, d)), dtype)
    mask = make_mask(b, sq, skv)
    scale = 1.0 / np.sqrt(d)
    allowed = float(mask.dense(b, sq, skv).sum()) / b if mask is not None else sq * skv
    fwd_flops = 4.0 * b * h * allowed * d
    ref = None if sq * skv > 4096 * 4096 else jax.jit(lambda q, k, v: xla_attention(q, k, v, mask, scale, None))(q, k, v)
    cudnn_fwd = None
    for impl in impls:
      if impl == "triton_interpret":
        fn = lambda q, k, v: interpret.flash_attention_interpret_callback_for_tests(q, k, v, mask, scale)
      elif impl == "cudnn_dense":
        dense = None if mask is None else mask.dense(b, sq, skv)[:, None]
        fn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale, mask=dense, implementation="cudnn")
      else:
        fn = lambda q, k, v, impl=impl: IMPLEMENTATIONS[impl](q, k, v, mask, scale, None)
      fwd = jax.jit(fn)
      fb = jax.jit(jax.grad(lambda q, k, v: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
      try:
        t_f = _timed(fwd, (q, k, v), args.reps, args.rounds)
        t_fb = _timed(fb, (q, k, v), args.reps, args.rounds)
        out = fwd(q, k, v)
      except (UnsupportedAttention, NotImplementedError, ValueError, RuntimeError) as e:
        print(f"{name:24s} {impl:16s} skipped: {str(e).splitlines()[0][:90]}")
        continue
      if impl == "cudnn":
        cudnn_fwd = t_f
      err = float("nan") if ref is None else float(
          jnp.linalg.norm((out - ref).astype(jnp.float32)) / jnp.linalg.norm(ref.astype(jnp.float32)))
      ratio = f"{cudnn_fwd / t_f:8.2f}" if cudnn_fwd else f"{'-':>8s}"
      print(f"{name:24s} {impl:16s} {t_f * 1e3:9.3f} {fwd_flops / t_f / 1e12:9.4f} {t_fb * 1e3:9.3f} "
            f"{3.5 * fwd_flops / t_fb / 1e12:9.4f} {ratio} {err:9.2e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
