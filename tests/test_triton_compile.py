"""Every default tiling of the Triton attention kernels, compiled for sm_90 (Hopper) on the CPU.

The interpreter tests (tests/test_triton_kernel.py) check the numerics but cannot see what only the
compiler checks or decides: a loop-carried variable whose type changes (which broke every non-square
backward tiling on the GPU while the interpreter ran them), register spills, a tl.dot that did not
become a wgmma, shared memory past the H100's 227 KiB. Triton compiles for sm_90 without a GPU
(its wheel ships ptxas), so this file guards all of that on the CPU-only CI. It runs
mmjax.kernels.compile_check in a child process: this pytest process may have switched Triton to its
interpreter (tests/test_triton_kernel.py does), and an interpreted kernel cannot be compiled.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton (not installed)")


def _compile_check(tmp_path, *args, ok=None):
  """Runs compile_check in a clean child; returns its JSON reports. Skips when this triton cannot
  compile for NVIDIA GPUs at all (exit status 3)."""
  env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
  env.update(
    TRITON_CACHE_DIR=str(tmp_path / "triton_cache"),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])),
  )
  res = subprocess.run(
    [sys.executable, "-m", "mmjax.kernels.compile_check", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=900,
  )
  reports = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
  if res.returncode == 3:
    pytest.skip(f"cannot compile for sm_90 here: {reports[0]['unavailable'] if reports else res.stderr[-300:]}")
  assert res.returncode in (0, 1), f"compile_check crashed (exit {res.returncode}):\n{res.stderr[-4000:]}"
  assert (res.returncode == 0) == all(not r["problems"] for r in reports)
  return reports


def test_default_tilings_compile_for_sm90_on_wgmma_without_spills(tmp_path):
  from mmjax.kernels import compile_check as cc
  from mmjax.kernels.triton_call import shared_memory_estimate

  reports = _compile_check(tmp_path)  # no flags: default_entries(), every default tiling
  expected = [(k, d, dtype, variant) for k, d, dtype, _, variant in cc.default_entries()]
  assert [(r["kernel"], r["head_dim"], r["dtype"], r["variant"]) for r in reports] == expected  # none missing
  table = "\n".join(
    f"{r['kernel']:12s} D{r['head_dim']:<4d} {r['dtype']:9s} {r['variant']:6s} {r['tiling']:11s} "
    f"regs {r['registers']:4d} spills {r['spill_bytes']:5d} smem {r['shared_bytes']:6d} "
    f"dots {r['dots']} wgmma {r['wgmma_dots']} other {r['other_dots']} {'; '.join(r['problems'])}"
    for r in reports
  )
  print(table)
  bad = [r for r in reports if r["problems"]]
  assert not bad, "default tilings that fail on sm_90:\n" + table
  for r in reports:  # float32 dots may fall back from wgmma (see compile_check.Report.problems)
    if r["kernel"] != "delta" and r["dtype"] != "float32":
      assert r["dots"] > 0 and r["wgmma_dots"] == r["dots"], r
  # fit_tiling keeps shared_memory_estimate under its budget; the estimate must bound the real thing.
  for r in reports:
    if r["kernel"] != "delta":
      kernel = "dkdv" if r["kernel"].startswith("dkdv") else r["kernel"]
      itemsize = 4 if r["dtype"] == "float32" else 2
      estimate = shared_memory_estimate(kernel, cc.parse_tiling(r["tiling"]), r["head_dim"], itemsize)
      assert r["shared_bytes"] <= estimate, (r["kernel"], r["head_dim"], r["dtype"], r["tiling"], estimate)


def test_the_check_sees_spills_and_non_wgmma_dots(tmp_path):
  """The checker itself: a tiling known to spill (dK/dV 64x64 on 4 warps at D=128 holds K, V, dK,
  dV, two logit tiles and the dQ share in 128 threads) and one whose atomic dQ product cannot be a
  wgmma (both of its sides, 16 and the head dim 32, are under wgmma's M of 64) must be reported."""
  reports = _compile_check(
    tmp_path,
    "--kernels=dkdv_atomic",
    "--tilings=64x64w4s2",
    "--head_dims=128",
    "--extra=dkdv_atomic:32:bfloat16:16x128w8s2",
  )
  spill, dot = reports
  assert spill["spill_bytes"] > 0 and any("spills" in p for p in spill["problems"]), spill
  assert dot["other_dots"] > 0 and any("wgmma" in p for p in dot["problems"]), dot


def test_tiling_sweep_plan_reads_the_screen():
  """The GPU script's sweep (kernels/benchmarks/tiling_sweep.py) on a CPU: parses the committed
  screen of candidate tilings and prints its plan; every candidate passed the sm_90 checks."""
  res = subprocess.run(
    [sys.executable, "kernels/benchmarks/tiling_sweep.py", "--plan"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(
      os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    ),
  )
  assert res.returncode == 0, res.stderr[-3000:]
  plans = [line for line in res.stdout.splitlines() if line.startswith("plan: ")]
  counts = [int(n) for line in plans for n, _ in re.findall(r"(\d+) (fwd|dkdv_atomic|dkdv|dq)\b", line)]
  assert len(plans) == 5 and len(counts) == 20 and min(counts) > 0, res.stdout  # 5 cases x 4 kernels
  with open(os.path.join(ROOT, "kernels", "benchmarks", "sm90_compile_screen.jsonl")) as f:
    screen = [json.loads(line) for line in f]
  assert {r["kernel"] for r in screen if not r["problems"]} >= {"fwd", "dkdv_atomic", "dkdv", "dq"}
