"""The scripts' bad-input errors: one line on stderr naming what is wrong, exit status 2, and the
traceback only with --debug."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def _train(tmp_path, *flags):
  env = dict(os.environ, MMJAX_DATA_DIR=str(tmp_path / "data"))
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "train.py"),
      f"--workdir={tmp_path / 'wd'}",
      f"--config.data.manifest={tmp_path / 'missing.jsonl'}",
      *flags,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )


def test_bad_input_is_one_line_and_exit_2(tmp_path):
  r = _train(tmp_path)
  assert r.returncode == 2, r.stderr
  lines = [l for l in r.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "missing.jsonl" in lines[0], r.stderr
  assert "Traceback" not in r.stderr
  r = _train(tmp_path, "--debug")
  assert r.returncode != 0 and "Traceback" in r.stderr and "missing.jsonl" in r.stderr
