"""Tiling sweep of the Triton attention kernels and the head-to-head against cuDNN, on one GPU.

For each case (the GPU cases of attention_benchmark.py):
  1. every pre-screened tiling of each kernel is timed alone: the forward kernel, the dK/dV kernel of
     the atomic backward (it also adds dQ), the dK/dV and dQ kernels of the deterministic one. The
     candidates are the tilings that compiled for sm_90 on a CPU with every dot on wgmma and no
     register spills (`--screen`, written by `python -m mmjax.kernels.compile_check`);
  2. the fastest tiling of each kernel is kept, and Triton with those tilings (both backward forms)
     is timed against cuDNN interleaved round by round (cuDNN fwd, Triton fwd, cuDNN fwd+bwd,
     Triton fwd+bwd, ... in every round), so that clock and thermal drift hit both sides alike;
  3. it prints forward, backward (= fwd+bwd - fwd, per round) and fwd+bwd ratios cuDNN time /
     Triton time as median [min, max] over rounds, the error against cuDNN (output and gradients),
     and the chosen tilings as JSON. The last line is the DEFAULT_TILINGS suggestion: per kernel the
     candidate with the best geometric mean of time / fastest over the head-dim-128 cases.

    python kernels/benchmarks/tiling_sweep.py                       # GPU: the whole sweep (~4 min)
    python kernels/benchmarks/tiling_sweep.py --plan                # any machine: candidates and plan only
    python kernels/benchmarks/tiling_sweep.py --cases="causal 4k,cross" --max_candidates=3

A kernel "alone" is the recipe with every other kernel of the pass replaced by zeros of its output
shape (jnp.zeros: a memset, small next to the kernel). TFLOP/s follow attention_benchmark.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from attention_benchmark import _cases, timed_rounds  # noqa: E402  (the scripts' shared cases and timing)

SCREEN = os.path.join(HERE, "sm90_compile_screen.jsonl")
# Kernel name in the screen -> (recipe kernel launched alone, deterministic backward?)
KERNELS = {
  "fwd": ("_fwd_kernel", None),
  "dkdv_atomic": ("_bwd_dkdv_kernel", False),
  "dkdv": ("_bwd_dkdv_kernel", True),
  "dq": ("_bwd_dq_kernel", True),
}


def load_candidates(path: str, dtype: str = "bfloat16", max_candidates: int = 3) -> dict:
  """{(kernel, head_dim): [tiling strings]} of the screened tilings that passed (no problems), in
  the screen's order (the order they were listed in: most promising first), at most max_candidates."""
  out: dict = {}
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      if r["dtype"] != dtype or r["problems"] or r["kernel"] not in KERNELS:
        continue
      lst = out.setdefault((r["kernel"], r["head_dim"]), [])
      if r["tiling"] not in lst and len(lst) < max_candidates:
        lst.append(r["tiling"])
  return out


def _alone(name: str, q, k, v, mask, scale, tiling):
  """A jitted function that runs kernel `name` of the screen alone with `tiling`, and its args."""
  import jax
  import jax.numpy as jnp

  from mmjax.kernels import flash_attention as fa, triton_call

  kernel_name, deterministic = KERNELS[name]
  key = "dkdv" if name == "dkdv_atomic" else name
  cfg, arrays = triton_call.prepare(q, k, mask, scale, None, deterministic=bool(deterministic), **{key: tiling})

  def launch(kernel, grid, operands, outputs, meta, t, zeroed=()):
    if kernel.__name__ == kernel_name:
      return triton_call._jax_triton_launch(kernel, grid, operands, outputs, meta, t, zeroed)
    return [jnp.zeros(shape, dtype) for shape, dtype in outputs]

  if name == "fwd":
    return jax.jit(lambda q, k, v: fa.forward(launch, q, k, v, arrays, cfg)[0]), (q, k, v)
  out, lse = jax.jit(lambda q, k, v: fa.forward(triton_call._jax_triton_launch, q, k, v, arrays, cfg))(q, k, v)
  bwd = jax.jit(lambda q, k, v, out, lse, dout: fa.backward(launch, q, k, v, out, lse, dout, arrays, cfg))
  return bwd, (q, k, v, out, lse, out)


def _summary(xs):
  return f"{statistics.median(xs):5.2f} [{min(xs):.2f}, {max(xs):.2f}]"


def _rel(a, b):
  import jax.numpy as jnp

  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def run_case(case, candidates, args, parse_tiling):
  import jax
  import jax.numpy as jnp

  from mmjax.kernels import triton_call

  name, b, sq, skv, h, d, make_mask = case
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in ((b, sq, h, d), (b, skv, h, d), (b, skv, h, d)))
  mask = make_mask(b, sq, skv)
  scale = 1.0 / math.sqrt(d)
  allowed = float(mask.dense(b, sq, skv).sum()) / b if mask is not None else sq * skv
  fwd_flops = 4.0 * b * h * allowed * d

  best, times = {}, {}
  for kernel in KERNELS:
    for text in candidates.get((kernel, d), []):
      try:
        fn, fn_args = _alone(kernel, q, k, v, mask, scale, parse_tiling(text))
        t = statistics.median(timed_rounds(fn, fn_args, args.reps, args.sweep_rounds))
      except Exception as e:  # noqa: BLE001 - one failing tiling must not end the sweep
        print(f"{name:24s} {kernel:12s} {text:12s} FAILED: {' '.join(str(e).split())[-300:]}", flush=True)
        continue
      times[kernel, text] = t
      print(f"{name:24s} {kernel:12s} {text:12s} {t * 1e3:9.3f} ms", flush=True)
      if kernel not in best or t < times[kernel, best[kernel]]:
        best[kernel] = text
  if "fwd" not in best or not ({"dkdv_atomic"} <= set(best) or {"dkdv", "dq"} <= set(best)):
    print(f"{name:24s} no complete set of working tilings; skipped the comparison")
    return None, times

  fwd_t = parse_tiling(best["fwd"])
  rows = {}
  if "dkdv_atomic" in best:
    rows["atomic"] = dict(fwd=fwd_t, dkdv=parse_tiling(best["dkdv_atomic"]), deterministic=False)
  if "dkdv" in best and "dq" in best:
    rows["deterministic"] = dict(
      fwd=fwd_t, dkdv=parse_tiling(best["dkdv"]), dq=parse_tiling(best["dq"]), deterministic=True
    )
  fns = {
    form: functools.partial(triton_call.flash_attention, mask=mask, scale=scale, **kw) for form, kw in rows.items()
  }
  if mask is None or mask.q_segment_ids is None:
    kv_len = None if mask is None or mask.kv_valid_len is None else mask.kv_valid_len
    fns["cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
      q,
      k,
      v,
      scale=scale,
      is_causal=bool(mask is not None and mask.causal),
      key_value_seq_lengths=kv_len,
      implementation="cudnn",
    )
    base = "cudnn"
  else:  # cuDNN takes no segment ids: it gets the dense mask
    dense = mask.dense(b, sq, skv)[:, None]
    fns["cudnn_dense"] = lambda q, k, v: jax.nn.dot_product_attention(
      q, k, v, scale=scale, mask=dense, implementation="cudnn"
    )
    base = "cudnn_dense"
  dout = jnp.asarray(rng.standard_normal(q.shape), jnp.bfloat16)
  fwd = {n: jax.jit(f) for n, f in fns.items()}
  fb = {n: jax.jit(lambda q, k, v, f=f: jax.vjp(f, q, k, v)[1](dout)) for n, f in fns.items()}
  per_round = {n: ([], []) for n in fns}
  for n in fns:  # compile and warm up everything before the first timed round
    jax.block_until_ready((fwd[n](q, k, v), fb[n](q, k, v)))
  for _ in range(args.rounds):
    for n in fns:
      per_round[n][0].extend(timed_rounds(fwd[n], (q, k, v), args.reps, 1))
      per_round[n][1].extend(timed_rounds(fb[n], (q, k, v), args.reps, 1))
  ref_out, ref_grads = fwd[base](q, k, v), fb[base](q, k, v)
  bf, bfb = per_round[base]
  for form in rows:
    tf, tfb = per_round[form]
    ratio_f = [c / t for c, t in zip(bf, tf)]
    ratio_b = [(cb - c) / (tb - t) for c, cb, t, tb in zip(bf, bfb, tf, tfb)]
    ratio_fb = [cb / tb for cb, tb in zip(bfb, tfb)]
    errs = dict(
      out=_rel(fwd[form](q, k, v), ref_out),
      **{g: _rel(x, r) for g, x, r in zip(("dq", "dk", "dv"), fb[form](q, k, v), ref_grads)},
    )
    print(
      f"{name:24s} triton {form:13s} vs {base}: fwd x {_summary(ratio_f)}  bwd x {_summary(ratio_b)}  "
      f"f+b x {_summary(ratio_fb)}  ({fwd_flops / statistics.median(tf) / 1e12:.0f} / "
      f"{3.5 * fwd_flops / statistics.median(tfb) / 1e12:.0f} TFLOP/s fwd / f+b; {base} "
      f"{fwd_flops / statistics.median(bf) / 1e12:.0f} / {3.5 * fwd_flops / statistics.median(bfb) / 1e12:.0f})  "
      f"rel err vs {base}: " + ", ".join(f"{k} {e:.1e}" for k, e in errs.items()),
      flush=True,
    )
  fastest = min(rows, key=lambda form: statistics.median(per_round[form][1]))
  chosen = dict(case=name, head_dim=d, backward=fastest, **best)
  print("CHOSEN " + json.dumps(chosen), flush=True)
  return chosen, times


def suggest_defaults(all_times: list[dict], head_dims: list[int], head_dim: int = 128) -> dict:
  """Per kernel, the tiling with the best geometric mean of time / fastest candidate over the cases
  of `head_dim` where it ran in every one of them."""
  out = {}
  cases = [t for t, d in zip(all_times, head_dims) if d == head_dim and t]
  for kernel in KERNELS:
    scores = {}
    for times in cases:
      mine = {text: t for (kn, text), t in times.items() if kn == kernel}
      if not mine:
        continue
      fastest = min(mine.values())
      for text, t in mine.items():
        scores.setdefault(text, []).append(math.log(t / fastest))
    full = {text: s for text, s in scores.items() if len(s) == len(cases)}
    if full:
      out[kernel] = min(full, key=lambda text: sum(full[text]))
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--screen", default=SCREEN, help="JSON lines from mmjax.kernels.compile_check")
  parser.add_argument("--max_candidates", type=int, default=3, help="per kernel and head dim (3 fit the ~4 minutes)")
  parser.add_argument("--cases", default="", help="comma-separated substrings of the case names")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds against cuDNN")
  parser.add_argument("--sweep_rounds", type=int, default=3)
  parser.add_argument("--reps", type=int, default=10)
  parser.add_argument("--plan", action="store_true", help="print the candidates and cases; time nothing")
  args = parser.parse_args(argv)

  from mmjax.kernels.compile_check import parse_tiling

  candidates = load_candidates(args.screen, max_candidates=args.max_candidates)
  for (kernel, d), lst in sorted(candidates.items()):
    lst[:] = [str(parse_tiling(t)) for t in lst]  # fails early on a malformed screen
  cases = _cases(tiny=False)
  if args.cases:
    words = [w.strip() for w in args.cases.split(",")]
    cases = [c for c in cases if any(w in c[0] for w in words)]
    if not cases:
      raise SystemExit(f"--cases={args.cases!r} matches none of {[c[0] for c in _cases(tiny=False)]}.")
  print(
    f"screen {os.path.relpath(args.screen)}: "
    + "; ".join(f"{kernel} D{d}: {', '.join(lst)}" for (kernel, d), lst in sorted(candidates.items()))
  )
  missing = sorted({(kernel, c[5]) for c in cases for kernel in KERNELS} - set(candidates))
  if missing:
    print(f"no screened candidates for {missing}: those kernels are not swept")
  if args.plan:
    for c in cases:
      print(f"plan: {c[0]}: " + ", ".join(f"{len(candidates.get((kernel, c[5]), []))} {kernel}" for kernel in KERNELS))
    return 0
  import jax

  if jax.default_backend() != "gpu":
    raise SystemExit("tiling_sweep.py times kernels on a GPU; on this machine use --plan.")
  print(
    f"jax {jax.__version__}, {jax.devices()[0].device_kind}, bf16, sweep {args.sweep_rounds} x {args.reps}, "
    f"interleaved {args.rounds} rounds x {args.reps}",
    flush=True,
  )
  chosen, all_times = [], []
  for case in cases:
    c, times = run_case(case, candidates, args, parse_tiling)
    chosen.append(c)
    all_times.append(times)
  print("CHOSEN_ALL " + json.dumps([c for c in chosen if c]))
  print("SUGGESTED_DEFAULTS " + json.dumps(suggest_defaults(all_times, [c[5] for c in cases])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
