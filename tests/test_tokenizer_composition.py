"""experiments/proj/shapes/tokenizer_composition.py: its finite scalar quantization against a float64
numpy reference and hand-computed codes, and the script end to end on the tiny t2i data."""

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from tests.conftest import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "proj", "shapes", "tokenizer_composition.py")
_spec = importlib.util.spec_from_file_location("tokenizer_composition", SCRIPT)
tc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tc  # flax's dataclass transform looks the module up by name
_spec.loader.exec_module(tc)

LEVELS = (8, 5, 5, 3)


def reference(z, levels):
  z = np.asarray(z, np.float64)
  sizes = np.array(levels, np.float64)
  half_l = (sizes - 1) * (1 + 1e-3) / 2
  offset = np.where(sizes % 2 == 0, 0.5, 0.0)
  digits = np.round(np.tanh(z + np.arctanh(offset / half_l)) * half_l - offset) + sizes // 2
  basis = np.cumprod((1,) + tuple(levels[:-1]))
  return (digits - sizes // 2) / (sizes // 2), (digits * basis).sum(-1).astype(np.int64)


def test_fsq_against_float64_and_by_hand():
  z = jax.random.normal(jax.random.key(0), (512, len(LEVELS))) * 2.0
  q, codes = tc.fsq(z, LEVELS)
  want_q, want_codes = reference(z, LEVELS)
  np.testing.assert_array_equal(np.asarray(codes), want_codes)
  np.testing.assert_allclose(np.asarray(q), want_q, atol=1e-6)
  # Every level of every dim is reached, and nothing else: 8 x 5 x 5 x 3 = 600 codes; along each dim
  # the level never falls as z grows.
  codes = np.asarray(codes)
  digits = (codes[:, None] // np.cumprod((1,) + LEVELS[:-1])) % np.array(LEVELS)
  assert all(set(digits[:, d]) == set(range(n)) for d, n in enumerate(LEVELS))
  assert 0 <= codes.min() and codes.max() < 600
  for d in range(len(LEVELS)):
    assert (np.diff(digits[np.argsort(np.asarray(z)[:, d]), d]) >= 0).all()
  # By hand: z = 0 is the middle level of each dim (8 levels: 4 of 0..7, the offset's rounding), so
  # code 4 + 2*8 + 2*40 + 1*200 = 300; a large z is the top level of each, 7 + 4*8 + 4*40 + 2*200 = 599.
  assert int(tc.fsq(jnp.zeros((1, 4)), LEVELS)[1][0]) == 300
  assert int(tc.fsq(jnp.full((1, 4), 9.0), LEVELS)[1][0]) == 599
  assert int(tc.fsq(jnp.full((1, 4), -9.0), LEVELS)[1][0]) == 0
  # The codes' vectors are the quantized vectors; the gradient passes straight through the rounding.
  np.testing.assert_allclose(np.asarray(tc.fsq_vectors(codes, LEVELS)), np.asarray(q), atol=1e-6)
  g = jax.grad(lambda v: jnp.sum(tc.fsq(v, LEVELS)[0]))(z)
  sizes = np.array(LEVELS, np.float64)
  half_l = (sizes - 1) * (1 + 1e-3) / 2
  shift = np.arctanh(np.where(sizes % 2 == 0, 0.5, 0.0) / half_l)
  want_g = (1 - np.tanh(np.asarray(z, np.float64) + shift) ** 2) * half_l / (sizes // 2)
  np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-4, atol=1e-6)  # float32 tanh near saturation


def test_script_runs_on_tiny_data(shared_data_dir, tmp_path):
  env = dict(os.environ, MMJAX_DATA_DIR=shared_data_dir)
  env.pop("XLA_FLAGS", None)
  for quantizer in ("vq", "fsq"):
    r = subprocess.run(
      [
        sys.executable,
        SCRIPT,
        "--config=" + os.path.join(ROOT, "experiments", "configs", "t2i.py") + ":tiny",
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
