"""Exact resume and preemption: SIGKILL at a random step + restart ends bit-identical to an
uninterrupted run; SIGTERM checkpoints and exits 0; a corrupted newest checkpoint falls back to the
previous one; a non-finite loss stops the run (or is skipped with skip_nonfinite)."""

import logging
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from mmjax.data import pipeline
from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
ENTRY = os.path.join(ROOT, "tests", "train_entry.py")


def _steps(wd):
  d = os.path.join(wd, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _launch(wd, data_dir, total, sleep=0.0):
  return subprocess.Popen(
    [sys.executable, ENTRY, wd, data_dir, str(total), str(sleep)],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def _wait_for_checkpoint(proc, wd, step, timeout=300):
  t = time.time()
  while time.time() - t < timeout:
    if any(s >= step for s in _steps(wd)):
      return
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  raise TimeoutError(f"no checkpoint >= {step} in {wd}")


def _params(wd):
  return [np.asarray(x) for x in jax.tree.leaves(workdir_lib.load(wd).params)]


@pytest.fixture
def data_dir(tiny_config):
  pipeline.Data(tiny_config)  # build dataset + tokenizer once, before subprocesses share it
  return tiny_config.data.data_dir


def test_sigkill_then_restart_is_bit_identical(data_dir, tmp_path):
  total = 7
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  p_ref = _launch(ref, data_dir, total)
  kill_at = random.Random().randint(2, total - 2)
  p = _launch(killed, data_dir, total, sleep=0.4)
  _wait_for_checkpoint(p, killed, kill_at)
  p.send_signal(signal.SIGKILL)
  p.wait()
  assert p.returncode == -signal.SIGKILL
  assert max(_steps(killed)) < total, "the run finished before it could be killed"
  p2 = _launch(killed, data_dir, total)
  out2, err2 = p2.communicate(timeout=600)
  out_ref, err_ref = p_ref.communicate(timeout=600)
  assert p2.returncode == 0, err2[-3000:]
  assert p_ref.returncode == 0, err_ref[-3000:]
  a, b = _params(ref), _params(killed)
  assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), f"killed after step {kill_at}"
  rows = read_metrics(killed)
  losses_k = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
  losses_r = {r["step"]: r["train/loss"] for r in read_metrics(ref) if "train/loss" in r}
  assert losses_k[total] == losses_r[total]


def test_sigterm_checkpoints_and_exits_zero(data_dir, tmp_path):
  wd = str(tmp_path / "run")
  p = _launch(wd, data_dir, 50, sleep=0.3)
  _wait_for_checkpoint(p, wd, 2)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0, err[-3000:]
  stopped = int(out.strip().split("stopped_at:")[1])
  assert 2 <= stopped < 50
  assert max(_steps(wd)) == stopped  # the step it finished was checkpointed


def test_corrupted_latest_checkpoint_falls_back(tiny_config, tmp_path, caplog):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 3
  tiny_config.checkpoint_every = 1
  tiny_config.eval_max_examples = 8
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  assert _steps(wd)[-1] == 3
  for root, _, files in os.walk(os.path.join(wd, "checkpoints", "3", "state")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\x00garbage")
  from mmjax.train import state as state_lib

  data = workdir_lib.load_data(tiny_config, wd)
  setup = state_lib.make_setup(tiny_config, data.tokenizer.vocab_size)
  ckpt = Checkpointer(wd, keep=5, save_interval_steps=1)
  with caplog.at_level(logging.WARNING):
    step, state, data_state = ckpt.restore(setup.abstract_state, tiny_config)
  ckpt.close()
  assert step == 2
  assert any("checkpoint 3" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)
  assert 3 not in _steps(wd) and os.listdir(os.path.join(wd, "checkpoints_unreadable"))
  # Training on resumes from step 2 and rewrites step 3.
  tiny_config.total_steps = 4
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  assert _steps(wd)[-1] == 4 and 3 in _steps(wd)


def _nan_at(step_to_poison):
  def hook(step, batch):
    if step == step_to_poison:
      batch = dict(batch, target_mask=np.full_like(batch["target_mask"], np.nan))
    return batch

  return hook


def test_nonfinite_loss_stops_naming_the_step(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 5
  tiny_config.checkpoint_every = 1
  with pytest.raises(trainer.NonFiniteLoss, match="at step 3"):
    trainer.train_and_evaluate(tiny_config, wd, progress=False, batch_transform=_nan_at(3))
  assert max(_steps(wd)) == 2  # nothing saved after the bad step
  assert all(np.isfinite(x).all() for x in _params(wd))


def test_skip_nonfinite_skips_the_update(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 4
  tiny_config.checkpoint_every = 2
  tiny_config.eval_max_examples = 8
  tiny_config.skip_nonfinite = True
  trainer.train_and_evaluate(tiny_config, wd, progress=False, batch_transform=_nan_at(2))
  rows = {r["step"]: r for r in read_metrics(wd) if "train/loss" in r}
  assert rows[2]["train/loss"] == "nan" and np.isfinite(rows[3]["train/loss"])
  assert all(np.isfinite(x).all() for x in _params(wd))
