"""Tests that need several devices, on any machine: `@pytest.mark.devices(8)`.

A test so marked runs as usual in a process that has at least that many devices. In one with fewer
(CI's plain `python -m pytest`, a 1-CPU or 1-GPU machine) it runs in a child pytest on that many
simulated CPU devices instead of being skipped: `--xla_force_host_platform_device_count` only takes
effect if it is in XLA_FLAGS before JAX starts, so it cannot be set for a test inside this process.
The hook in tests/conftest.py calls `run_elsewhere` for every marked test.
"""

import os
import re
import subprocess
import sys

import pytest

# Set in the child: a child that still has too few devices is an error, not another child.
CHILD_ENV = "MMJAX_TEST_SIMULATED_DEVICES"
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def child_env(n: int) -> dict:
  """This process's environment with n simulated CPU devices (any other device count dropped) and
  without pytest's per-process variables (PYTEST_CURRENT_TEST, xdist's worker ids)."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
  env.update(XLA_FLAGS=" ".join(flags + [f"{DEVICE_COUNT_FLAG}={n}"]), JAX_PLATFORMS="cpu", **{CHILD_ENV: str(n)})
  return env


def run_elsewhere(item: pytest.Function, n: int, timeout_s: int = 900) -> bool:
  """False: this process has n devices, run the test here. True: it ran (and passed) in a child
  pytest on n simulated CPU devices; its failure fails this test with the child's report."""
  import jax

  if jax.device_count() >= n:
    return False
  if os.environ.get(CHILD_ENV):
    pytest.fail(
      f"{item.nodeid} needs {n} devices but this child process has {jax.devices()} although "
      f"{CHILD_ENV}={os.environ[CHILD_ENV]} and XLA_FLAGS={os.environ.get('XLA_FLAGS')!r}."
    )
  res = subprocess.run(
    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", item.nodeid],
    cwd=str(item.config.rootpath),
    env=child_env(n),
    capture_output=True,
    text=True,
    timeout=timeout_s,
  )
  report = (res.stdout + res.stderr)[-6000:]
  # Exit code 0 with exactly one test passed: a child that collected nothing or skipped fails here.
  if res.returncode != 0 or not re.search(r"\b1 passed\b", res.stdout) or re.search(r"\bskipped\b", res.stdout):
    pytest.fail(
      f"{item.nodeid} on {n} simulated devices (child pytest, exit code {res.returncode}):\n{report}", pytrace=False
    )
  return True
