"""Two processes on localhost (CPU, gloo collectives) train, checkpoint, resume, evaluate, and
match a 1-process run of the same global batch."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax.data import pipeline
from mmjax.train import workdir as workdir_lib
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ENTRY = os.path.join(ROOT, "tests", "train_entry.py")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(wd, data_dir, total, n):
  port = _free_port()
  procs = []
  for i in range(n):
    # One CPU device per process whatever the caller's XLA_FLAGS say (a CI that simulates 8 devices
    # would otherwise give each process 8 and the global batch of 8 could not be split 16 ways).
    flags = " ".join(
      f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
    if n > 1:
      env.update(MMJAX_COORDINATOR_ADDRESS=f"localhost:{port}", MMJAX_NUM_PROCESSES=str(n), MMJAX_PROCESS_ID=str(i))
    procs.append(
      subprocess.Popen(
        [sys.executable, ENTRY, wd, data_dir, str(total), "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]


def test_two_processes_match_one(tiny_config, tmp_path):
  pipeline.Data(tiny_config)
  d = tiny_config.data.data_dir
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  # Both runs take the same path: train to step 2, checkpoint, resume to step 4. (The learning-rate
  # schedule depends on total_steps, so a straight 4-step run is not the reference for a run that
  # was first started with total_steps=2.)
  for wd, n in ((one, 1), (two, 2)):
    _run(wd, d, 2, n)
    _run(wd, d, 4, n)
  a = jax.tree.leaves(workdir_lib.load(one).params)
  b = jax.tree.leaves(workdir_lib.load(two).params)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6)
