"""Classifier-free guidance of logits (mmjax.sample.guidance.guide) against float64 numpy: the guided
logits, the plausibility constraint's kept set on fresh random logits and on a hand-made row, and the
errors. The kinds' drawings with the constraint are checked against their full teacher-forced forwards
in test_pixel_tokens and test_image_tokens."""

import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.sample.guidance import guide


def reference_guide(cond, null, scale, plausibility=0.0):
  """float64 numpy: null + scale (cond - null), -inf where softmax(cond) < plausibility * its max."""
  cond, null = np.asarray(cond, np.float64), np.asarray(null, np.float64)
  p = np.exp(cond - cond.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  out = null + scale * (cond - null)
  return np.where(p >= plausibility * p.max(-1, keepdims=True), out, -np.inf)


@pytest.mark.parametrize("plausibility", [0.0, 0.05, 0.3])
def test_guided_logits_and_kept_set_match_numpy(plausibility):
  rng = np.random.default_rng(0)
  cond, null = rng.normal(0, 2, (2, 3, 50, 12)).astype(np.float32)
  got = np.asarray(guide(jnp.asarray(cond), jnp.asarray(null), 1.7, plausibility))
  want = reference_guide(cond, null, 1.7, plausibility)
  kept = np.isfinite(want)
  np.testing.assert_array_equal(np.isfinite(got), kept)
  assert not np.isnan(got).any()
  err = np.linalg.norm(got[kept] - want[kept]) / np.linalg.norm(want[kept])
  assert err < 1e-6
  if plausibility == 0.0:
    assert kept.all()
  else:  # the constraint drops some indices, never a row's likeliest one
    assert 0 < kept.sum() < kept.size
    assert kept[np.arange(3)[:, None], np.arange(50), cond.argmax(-1)].all()


def test_hand_made_row():
  """Conditional probabilities 0.5, 0.3, 0.004, 0.196 with plausibility 0.01: the floor is 0.005, so
  index 2 goes and the others keep null + 2 (cond - null)."""
  cond = jnp.log(jnp.asarray([0.5, 0.3, 0.004, 0.196]))
  null = jnp.log(jnp.asarray([0.1, 0.2, 0.6, 0.1]))
  got = np.asarray(guide(cond, null, 2.0, 0.01))
  want = 2 * np.log([0.5, 0.3, 0.004, 0.196]) - np.log([0.1, 0.2, 0.6, 0.1])
  assert got[2] == -np.inf
  np.testing.assert_allclose(got[[0, 1, 3]], want[[0, 1, 3]], rtol=1e-6)
  # With plausibility 0.007 the floor is 0.0035: index 2 comes back.
  assert np.isfinite(np.asarray(guide(cond, null, 2.0, 0.007))[2])


@pytest.mark.parametrize("plausibility", [-0.1, 1.0, float("nan")])
def test_bad_plausibility(plausibility):
  with pytest.raises(ValueError, match="plausibility"):
    guide(jnp.zeros(3), jnp.zeros(3), 2.0, plausibility)
