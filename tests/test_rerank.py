"""Best-of-N drawing (mmjax.sample.rerank): the drawing's log-probability against float64 numpy on
made-up logits (conditional and guided), the kept drawing against the likeliest candidate found by
numpy, candidates 1 as the plain drawing, and the errors. The kinds' own drawings are checked against
their full teacher-forced forwards in test_pixel_tokens and test_image_tokens (`likeliest_candidates`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.sample.rerank import best_of, log_probability

B, N, K = 5, 7, 6


def _log_softmax64(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _tables():
  """Logits that depend on the row's caption (its first token), on the null condition (length 0) and
  on the previous index, as a causal model's would."""
  rng = np.random.default_rng(0)
  cond = rng.normal(0, 2, (10, N, K, K)).astype(np.float32)  # [first token, position, previous index, K]
  null = rng.normal(0, 2, (N, K, K)).astype(np.float32)
  return cond, null


def _logits_fn(indices, tokens, lengths):
  cond, null = (jnp.asarray(t) for t in _tables())
  prev = jnp.concatenate([jnp.zeros_like(indices[:, :1]), indices[:, :-1]], axis=1)
  pos = jnp.arange(N)
  c = cond[tokens[:, 0][:, None], pos[None], prev]
  u = null[pos[None], prev]
  return jnp.where((lengths > 0)[:, None, None], c, u)


def _reference_log_probability(indices, tokens, lengths, guidance):
  cond, null = _tables()
  indices, tokens, lengths = (np.asarray(a) for a in (indices, tokens, lengths))
  out = np.zeros(len(indices))
  for r in range(len(indices)):
    prev = 0
    for i in range(N):
      lc = cond[tokens[r, 0], i, prev] if lengths[r] > 0 else null[i, prev]
      lu = null[i, prev]
      logits = lc if guidance is None else lu + guidance * (lc.astype(np.float64) - lu)
      out[r] += _log_softmax64(logits)[indices[r, i]]
      prev = indices[r, i]
  return out


def _captions():
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, 10, (B, 3)), jnp.int32)
  return tokens, jnp.asarray([3, 2, 0, 1, 3], jnp.int32)


def _draw_fn(tokens, lengths, rng):
  """Indices drawn uniformly: the candidates differ in likelihood, and the likeliest is rarely first."""
  return jax.random.randint(rng, (tokens.shape[0], N), 0, K)


@pytest.mark.parametrize("guidance", [None, 1.7])
def test_log_probability_against_float64(guidance):
  tokens, lengths = _captions()
  indices = _draw_fn(tokens, lengths, jax.random.key(0))
  got = log_probability(_logits_fn, indices, tokens, lengths, guidance)
  want = _reference_log_probability(indices, tokens, lengths, guidance)
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5)


@pytest.mark.parametrize("guidance", [None, 1.7])
def test_best_of_keeps_the_likeliest_candidate(guidance):
  tokens, lengths = _captions()
  c, rng = 6, jax.random.key(2)
  many = np.asarray(_draw_fn(jnp.tile(tokens, (c, 1)), jnp.tile(lengths, c), rng)).reshape(c, B, N)
  scores = np.stack([_reference_log_probability(many[i], tokens, lengths, guidance) for i in range(c)])
  best = scores.argmax(0)
  assert len(set(best.tolist())) > 1  # the choice matters: not one candidate for every row
  got = best_of(_draw_fn, _logits_fn, tokens, lengths, rng, candidates=c, guidance=guidance)
  np.testing.assert_array_equal(np.asarray(got), many[best, np.arange(B)])


def test_one_candidate_is_the_plain_drawing_and_errors():
  tokens, lengths = _captions()
  unscored = lambda *a: pytest.fail("one candidate needs no score")
  got = best_of(_draw_fn, unscored, tokens, lengths, jax.random.key(3), candidates=1)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(_draw_fn(tokens, lengths, jax.random.key(3))))
  with pytest.raises(ValueError, match="candidates=0 must be >= 1"):
    best_of(_draw_fn, _logits_fn, tokens, lengths, jax.random.key(3), candidates=0)


def likeliest_candidates(drawn, full_logits, lengths, candidates, guidance):
  """A kind's best-of reference: of candidate-major drawings [C * B, ...] (as best_of draws them), the
  one per row of highest float64 log-probability under full_logits(indices, lengths) -> the
  teacher-forced logits [C * B, ..., K] of a reference forward (guided at `guidance` unless None).
  Returns (the kept indices [B, ...], each row's winning candidate [B])."""
  drawn = np.asarray(drawn)
  lc = np.asarray(full_logits(drawn, lengths), np.float64)
  if guidance is not None:
    lu = np.asarray(full_logits(drawn, jnp.zeros_like(lengths)), np.float64)
    lc = lu + guidance * (lc - lu)
  b = len(drawn) // candidates
  logp = np.take_along_axis(_log_softmax64(lc), drawn[..., None], -1).reshape(candidates, b, -1).sum(-1)
  best = logp.argmax(0)
  return drawn.reshape((candidates, b) + drawn.shape[1:])[best, np.arange(b)], best
