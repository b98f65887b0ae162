"""Compile the flash-attention kernels for a GPU target on any machine (no GPU needed) and report
what the compiled code looks like: registers, spills, shared memory, and whether every tl.dot
became a Hopper wgmma.

    python -m mmjax.kernels.compile_check                    # every default tiling, sm_90, JSON lines
    python -m mmjax.kernels.compile_check --kernels=dkdv_atomic --tilings=64x64w4s2,32x128w8s2 \\
        --head_dims=64,128 --dtypes=bfloat16                 # screen candidate tilings

The kernels are compiled through the same launch recipes the GPU path uses (flash_attention.forward
and .backward, with a launcher that compiles instead of running), so the argument order, the
constexprs and the specialisation match what jax_triton builds: pointers 16-byte aligned, integer
arguments equal to 1 baked in as constants, other integers left general.

Must run in a process where triton is in compiled mode: a process that imported
mmjax.kernels.interpret (TRITON_INTERPRET=1) cannot compile, so tests call this as a subprocess.
Exit status: 0 when every kernel compiled and passed the checks, 1 when one did not, 3 when this
triton has no NVIDIA backend or ptxas (nothing could be checked).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import time

import numpy as np

SM90 = 90
# The H100's largest shared-memory allocation per block (227 KiB); the H200 has the same.
SM90_SHARED_MEMORY = 227 * 1024
KERNEL_NAMES = ("fwd", "dkdv_atomic", "dkdv", "dq", "delta")


@dataclasses.dataclass
class Report:
  kernel: str  # one of KERNEL_NAMES
  tiling: str
  head_dim: int
  dtype: str
  variant: str
  registers: int = -1
  spill_bytes: int = -1  # spill stores + spill loads, from ptxas
  stack_bytes: int = -1
  shared_bytes: int = -1
  dots: int = -1  # tt.dot ops before lowering to the GPU (tf32x3 is one op here)
  wgmma_dots: int = -1  # ttng.warp_group_dot ops after the MMA selection
  other_dots: int = -1  # tt.dot ops that did not become wgmma (mma.sync or FMA)
  mma_sync: int = -1  # mma.sync instructions in the PTX (the pre-Hopper tensor-core path)
  seconds: float = 0.0
  error: str = ""

  def problems(self, max_spill_bytes: int) -> list[str]:
    """What disqualifies this compiled kernel (empty: it passes). Compiling, and fitting the H100's
    shared memory, are required of every kernel. No spills past max_spill_bytes and every dot on
    wgmma are required of the 16-bit kernels (the fast path), with one allowance: the D=256 dK/dV
    kernel, which has no spill-free wgmma tiling (DEAD_END_SPILL_BYTES). float32 inputs run each
    product as three TF32 products (for float32 accuracy; not the fast path): their operands' high
    and low parts spill at every tiling tried and shared memory rules out wgmma for some of them,
    so for float32 spills and dots are reported, not failed."""
    if self.error:
      return [f"failed to compile: {self.error}"]
    out = []
    if self.shared_bytes > SM90_SHARED_MEMORY:
      out.append(f"{self.shared_bytes} bytes of shared memory (> {SM90_SHARED_MEMORY})")
    if self.dtype == "float32":
      return out
    allowed = max_spill_bytes
    if self.kernel.startswith("dkdv") and self.head_dim > 128:
      allowed = max(allowed, DEAD_END_SPILL_BYTES)
    if self.spill_bytes > allowed:
      out.append(f"{self.spill_bytes} bytes of register spills (> {allowed})")
    if self.dots and (self.other_dots or self.mma_sync or not self.wgmma_dots):
      out.append(f"{self.other_dots} tl.dot not on wgmma ({self.wgmma_dots} on wgmma, {self.mma_sync} mma.sync)")
    return out


# Spill bytes (ptxas' stores + loads) allowed the 16-bit dK/dV kernel at head dims past 128: its dK
# and dV accumulators alone take 128 registers per thread at 8 warps, and every wgmma tiling tried
# spills (16x64w8s2, the default, least: about 300 bytes deterministic, 900 atomic; Triton 3.9).
DEAD_END_SPILL_BYTES = 1024


VARIANTS = {  # mask / soft-cap flags of the compiled specialisation
  "causal": dict(causal=True, has_prefix=False, has_segments=False, has_kv_len=False, softcap=0.0),
  "dense": dict(causal=False, has_prefix=False, has_segments=False, has_kv_len=False, softcap=0.0),
  "all": dict(causal=True, has_prefix=True, has_segments=True, has_kv_len=True, softcap=30.0),
}

_TRITON_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int32": "i32", "int8": "i8"}


def backend_unavailable() -> str | None:
  """Why sm_90 code cannot be compiled in this process, or None."""
  try:
    import triton  # noqa: F401
  except ImportError as e:
    return f"triton is not installed ({e})"
  if os.environ.get("TRITON_INTERPRET") == "1":
    return "TRITON_INTERPRET=1: triton is in interpreter mode in this process"
  try:
    from triton.backends.nvidia.compiler import get_ptxas

    if not os.path.exists(get_ptxas(SM90).path):
      return "triton's ptxas is missing"
  except Exception as e:  # noqa: BLE001 - any failure here means "cannot check", not "kernel broken"
    return f"triton has no usable NVIDIA backend ({type(e).__name__}: {e})"
  return None


def parse_tiling(text: str):
  from mmjax.kernels.flash_attention import Tiling

  m = re.fullmatch(r"(\d+)x(\d+)w(\d+)s(\d+)", text.strip())
  if not m:
    raise ValueError(f"tiling {text!r} is not of the form 64x128w8s2 (block_q x block_k, warps, stages).")
  bq, bk, w, s = map(int, m.groups())
  return Tiling(block_q=bq, block_k=bk, num_warps=w, num_stages=s)


def _ptxas_numbers(log: str) -> dict:
  regs = re.search(r"Used (\d+) registers", log)
  spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
  stack = re.search(r"(\d+) bytes stack frame", log)
  if not (regs and spills and stack):
    raise RuntimeError(f"could not read the ptxas report from: {log[-500:]!r}")
  return dict(
    registers=int(regs.group(1)),
    spill_bytes=int(spills.group(1)) + int(spills.group(2)),
    stack_bytes=int(stack.group(1)),
  )


class _CompilingLauncher:
  """A flash_attention launch function that compiles each kernel for sm_90 instead of running it,
  recording one Report per kernel; `only` names the kernels to compile (others are skipped)."""

  def __init__(self, head_dim, dtype, variant, only):
    self.head_dim, self.dtype, self.variant, self.only = head_dim, dtype, variant, only
    self.reports: list[Report] = []

  def __call__(self, kernel, grid, operands, outputs, meta, tiling, zeroed=()):
    del grid, zeroed
    outs = [np.zeros(shape, dtype) for shape, dtype in outputs]
    name = {
      "_fwd_kernel": "fwd",
      "_bwd_dq_kernel": "dq",
      "_bwd_delta_kernel": "delta",
      "_bwd_dkdv_kernel": "dkdv_atomic" if meta.get("ATOMIC_DQ") else "dkdv",
    }[kernel.__name__]
    if name in self.only:
      self.reports.append(self.compile(kernel, name, list(operands) + outs, meta, tiling))
    return outs

  @staticmethod
  def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16

  def compile(self, kernel, name, args, meta, tiling) -> Report:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = Report(name, str(tiling), self.head_dim, self.dtype, self.variant)
    runtime = [p.name for p in kernel.params if not p.is_constexpr]
    signature, constexprs, attrs = {}, dict(meta), {}
    for pname, arg in zip(runtime, args, strict=True):
      if isinstance(arg, (bool, np.bool_)):
        raise TypeError(f"{pname}: boolean runtime arguments are not expected")
      if isinstance(arg, (int, np.integer)):
        if int(arg) == 1:  # jax_triton bakes integer arguments equal to 1 in as constants
          constexprs[pname] = 1
        else:
          signature[pname] = "i32" if -(2**31) <= int(arg) < 2**31 else "i64"
      else:
        signature[pname] = "*" + _TRITON_TYPES[np.dtype(arg.dtype).name]
        # jax_triton assumes (and XLA guarantees) 16-byte aligned buffers.
        attrs[(kernel.arg_names.index(pname),)] = [["tt.divisibility", 16]]
    for pname in kernel.arg_names:
      if pname in constexprs:
        signature[pname] = "constexpr"
    signature = {p: signature[p] for p in kernel.arg_names}
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report is printed; it is the only spill count
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
    log = io.StringIO()
    start = time.perf_counter()
    try:
      with contextlib.redirect_stdout(log):
        compiled = triton.compile(
          ASTSource(kernel, signature, constexprs, attrs),
          target=GPUTarget("cuda", SM90, 32),
          options=dict(num_warps=tiling.num_warps, num_stages=tiling.num_stages),
        )
    except Exception as e:  # noqa: BLE001 - reported per kernel; the caller decides
      # Triton wraps the cause in a CompilationError per call level: report the innermost one.
      while e.__cause__ is not None:
        e = e.__cause__
      report.error = " ".join(f"{type(e).__name__}: {e}".split())[-600:]
      report.seconds = time.perf_counter() - start
      return report
    report.seconds = time.perf_counter() - start
    for key, value in _ptxas_numbers(log.getvalue()).items():
      setattr(report, key, value)
    report.shared_bytes = int(compiled.metadata.shared)
    report.dots = len(re.findall(r"\btt\.dot\b", compiled.asm["ttir"]))
    report.wgmma_dots = len(re.findall(r"\bttng\.warp_group_dot\b", compiled.asm["ttgir"]))
    report.other_dots = len(re.findall(r"\btt\.dot\b", compiled.asm["ttgir"]))
    report.mma_sync = len(re.findall(r"\bmma\.sync\b", compiled.asm["ptx"]))
    return report


def compile_kernels(kernels, tilings, head_dim: int, dtype: str, variant: str = "causal") -> list[Report]:
  """Compiles `kernels` (names from KERNEL_NAMES) with `tilings` ({kernel: Tiling}; missing ones
  take the defaults for head_dim and dtype) by running the launch recipes on small host arrays."""
  from mmjax.kernels import flash_attention as fa, triton_call

  flags = VARIANTS[variant]
  tiles = dict(triton_call.default_tilings(head_dim, dtype))
  tiles.update({k.replace("_atomic", ""): t for k, t in tilings.items()})
  # Lengths that are not multiples of 16 and B, H > 1, so no argument is specialised as 1 or
  # divisible by 16: the general code that serves every shape.
  b, sq, skv, hq, hkv = 2, 300, 300, 4, 4
  np_dtype = _CompilingLauncher._bf16() if dtype == "bfloat16" else np.dtype(dtype)
  q = np.zeros((b, sq, hq, head_dim), np_dtype)
  kv = np.zeros((b, skv, hkv, head_dim), np_dtype)
  i32 = lambda *shape: np.zeros(shape, np.int32)
  arrays = fa.MaskArrays(
    i32(b, 5, 4), i32(5), i32(b, 5, 4), i32(5), i32(b, 5, 4), i32(5), i32(b), i32(b), i32(b, sq), i32(b, skv), i32(b)
  )
  reports = []
  for name in kernels:
    launcher = _CompilingLauncher(head_dim, dtype, variant, only={name})
    cfg = fa.KernelConfig(
      scale=0.1, fwd=tiles["fwd"], dkdv=tiles["dkdv"], dq=tiles["dq"], deterministic=name in ("dkdv", "dq"), **flags
    )
    if name == "fwd":
      fa.forward(launcher, q, kv, kv, arrays, cfg)
    else:
      lse = np.zeros((b, hq, sq), np.float32)
      fa.backward(launcher, q, kv, kv, q, lse, q, arrays, cfg)
    reports.extend(launcher.reports)
  return reports


def default_entries() -> list[tuple[str, int, str, None, str]]:
  """(kernel, head_dim, dtype, None, variant) covering the default tilings
  (triton_call.DEFAULT_TILINGS and its float32 fits) in about two minutes of compiling on one core:
  every kernel at every row of the 16-bit table (head dims 32, 64, 128, 256); at 96 (not a power of
  two: the head-dim mask on every load) and at 128 with every mask term and the soft-cap on (the
  most registers in the masked loops) the forward, atomic dK/dV and dQ kernels (the deterministic
  dK/dV kernel is the atomic one minus the dQ product); float32 at 128 and 256, the head dims whose
  fitted tilings press hardest on shared memory; float16, which takes bfloat16's tilings and the
  same wgmma instructions, at 128 for the forward and the atomic dK/dV. Not compiled: head dim 16
  (it takes head dim 32's tilings) and float32 below 128 (smaller tiles of the same kernels)."""
  out = [(k, d, "bfloat16", None, "causal") for d in (32, 64, 128, 256) for k in KERNEL_NAMES]
  out += [(k, 96, "bfloat16", None, "causal") for k in ("fwd", "dkdv_atomic", "dq")]
  out += [(k, 128, "bfloat16", None, "all") for k in ("fwd", "dkdv_atomic", "dq")]
  out += [(k, d, "float32", None, "causal") for d in (128, 256) for k in KERNEL_NAMES]
  return out + [(k, 128, "float16", None, "causal") for k in ("fwd", "dkdv_atomic")]


def _entries(args) -> list[tuple[str, int, str, str | None, str]]:
  """(kernel, head_dim, dtype, tiling or None for the default, variant) to compile, in order."""
  if not (args.tilings or args.head_dims or args.dtypes or args.kernels or args.extra or args.variants):
    return default_entries()
  kernels = [k for k in (args.kernels or ",".join(KERNEL_NAMES)).split(",") if k]
  tilings = [t for t in args.tilings.split(",") if t] or [None]
  out = [
    (k, int(d), dtype, t, variant)
    for variant in (args.variants or "causal").split(",")
    for dtype in (args.dtypes or "bfloat16").split(",")
    for d in (args.head_dims or "128").split(",")
    for t in tilings
    for k in kernels
  ]
  for extra in filter(None, args.extra.split(",")):
    parts = extra.split(":")
    if not 3 <= len(parts) <= 5:
      raise ValueError(f"--extra entry {extra!r} is not kernel:head_dim:dtype[:tiling[:variant]]")
    parts += [""] * (5 - len(parts))
    out.append((parts[0], int(parts[1]), parts[2], parts[3] or None, parts[4] or "causal"))
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--kernels", default="", help=f"comma-separated, of {KERNEL_NAMES} (default: all)")
  parser.add_argument(
    "--tilings",
    default="",
    help="comma-separated tilings (e.g. 64x64w4s2), each compiled for "
    "every kernel in --kernels (default: each kernel's default tiling)",
  )
  parser.add_argument("--head_dims", default="", help="comma-separated (default: 128)")
  parser.add_argument("--dtypes", default="", help="comma-separated (default: bfloat16)")
  parser.add_argument("--variants", default="", help=f"comma-separated, of {sorted(VARIANTS)} (default: causal)")
  parser.add_argument(
    "--extra",
    default="",
    help="more comma-separated kernel:head_dim:dtype[:tiling[:variant]] "
    "entries. With none of these flags: default_entries(), every default tiling",
  )
  parser.add_argument("--max_spill_bytes", type=int, default=0)
  args = parser.parse_args(argv)
  entries = _entries(args)
  unknown = ({e[0] for e in entries} - set(KERNEL_NAMES)) | ({e[4] for e in entries} - set(VARIANTS))
  if unknown:
    parser.error(f"unknown kernels or variants {sorted(unknown)}")
  for e in entries:
    if e[3]:
      parse_tiling(e[3])
  reason = backend_unavailable()
  if reason:
    print(json.dumps(dict(unavailable=reason)))
    return 3
  os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; 1 is its default
  ok = True
  for kernel, d, dtype, tiling, variant in entries:
    for r in compile_kernels([kernel], {kernel: parse_tiling(tiling)} if tiling else {}, d, dtype, variant):
      problems = r.problems(args.max_spill_bytes)
      ok &= not problems
      print(json.dumps(dict(dataclasses.asdict(r), problems=problems)), flush=True)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
