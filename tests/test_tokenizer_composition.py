"""experiments/proj/shapes/tokenizer_composition.py end to end on the tiny t2i data, with each quantizer
(the quantizers themselves are tested in tests/test_vq.py)."""

import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "proj", "shapes", "tokenizer_composition.py")


def test_script_runs_on_tiny_data(shared_data_dir, tmp_path):
  env = dict(os.environ, MMJAX_DATA_DIR=shared_data_dir)
  env.pop("XLA_FLAGS", None)
  for quantizer in ("vq", "fsq"):
    r = subprocess.run(
      [
        sys.executable,
        SCRIPT,
        "--config=" + os.path.join(ROOT, "experiments", "configs", "t2i_tokens.py") + ":tiny",
        "--steps=2",
        "--batch_size=8",
        f"--quantizer={quantizer}",
      ],
      capture_output=True,
      text=True,
      env=env,
      cwd=tmp_path,
      timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-3].startswith(f"{quantizer}, 2 steps: ")
    assert lines[-2].startswith("held-out pair: ") and lines[-1].startswith("other: ")
    assert "t2i_object_accuracy" in lines[-1] and "PSNR" in lines[-1]
