"""The benchmark scripts run on a CPU (tiny shapes) and print what their READMEs promise."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, ok=True):
  # One CPU device, whatever simulated device count another test left in this process's XLA_FLAGS.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  res = subprocess.run(
    [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(env, JAX_PLATFORMS="cpu")
  )
  assert (res.returncode == 0) == ok, res.stderr[-3000:]
  return res.stdout if ok else res.stderr


def test_attention_benchmark_cpu_rows_and_errors():
  out = _run("kernels/benchmarks/attention_benchmark.py", "--cpu-tiny", "--cases=cross", "--impls=xla,xla_chunked")
  rows = [line.split() for line in out.splitlines() if line.startswith("cross tiny")]
  assert [r[2] for r in rows] == ["xla", "xla_chunked"]
  assert float(rows[1][-1]) < 1e-5  # xla_chunked vs the float32 reference
  err = _run("kernels/benchmarks/attention_benchmark.py", "--cpu-tiny", "--cases=nosuchcase", ok=False)
  assert "--cases='nosuchcase' matches none" in err
  err = _run("kernels/benchmarks/attention_benchmark.py", "--cpu-tiny", "--impls=cudnn", ok=False)
  assert "--impls: ['cudnn'] not among" in err


def test_parse_triton_config():
  sys.path.insert(0, os.path.join(ROOT, "kernels", "benchmarks"))
  try:
    from attention_benchmark import parse_triton_config
  finally:
    sys.path.pop(0)
  both = parse_triton_config("128x64w8s3")
  assert both["fwd"] == both["bwd"] and (both["fwd"].block_q, both["fwd"].num_stages) == (128, 3)
  split = parse_triton_config("64x64w4s3/32x32w4s2")
  assert str(split["fwd"]) == "64x64w4s3" and str(split["bwd"]) == "32x32w4s2"
  with pytest.raises(ValueError, match="--triton_configs"):
    parse_triton_config("64x64")


def test_train_benchmark_reports_model_flops_and_mfu():
  out = _run(
    "experiments/benchmark_train.py",
    "--config=experiments/configs/tiny.py",
    "--steps=1",
    "--peak_tflops=1",
    "--config.batch_size=4",
  )
  assert "model FLOPs per step per device" in out and "MFU" in out, out


@pytest.mark.parametrize("config", ["t2i_flow.py:tiny", "t2i.py:tiny"])
def test_t2i_benchmark_cpu_rows(config):
  out = _run("experiments/benchmark_t2i.py", f"--config=experiments/configs/{config}", "--batch=4", "--repeats=1")
  rates = {line.split(":")[0]: float(line.split()[-2]) for line in out.splitlines() if line.endswith("images/s")}
  assert set(rates) == {"unguided", "guided"} and all(r > 0 for r in rates.values()), out
  assert "guided / unguided throughput:" in out
