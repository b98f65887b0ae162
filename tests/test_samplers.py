"""Samplers, decode and beam_search against toy Markov-chain "models" with known answers."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.sample import (
  Greedy,
  Temperature,
  TopK,
  TopP,
  beam_search,
  decode,
  length_normalizer,
  sampler_from_config,
)

EOS, PAD = 3, 4  # vocab 0..4 in the decode tests; 4 is never produced by the chains


def first_order_step(table):
  """logits = table[last token]; the cache only counts calls, to check it is threaded."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, cache, index):
    del index
    return table[tokens], {"calls": cache["calls"] + 1}

  return step_fn


def second_order_step(table):
  """logits = table[previous token, last token]: the cache holds the previous token, so beam search
  only gets the right answer if it reorders the cache with the beams."""
  table = jnp.asarray(table, jnp.float32)

  def step_fn(tokens, cache, index):
    del index
    return table[cache["prev"], tokens], {"prev": tokens}

  return step_fn


def log_softmax64(x):
  x = np.asarray(x, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------- samplers


def test_invalid_parameters_raise():
  for bad in (
    lambda: Temperature(0.0),
    lambda: Temperature(-1.0),
    lambda: Temperature(float("nan")),
    lambda: TopK(0),
    lambda: TopK(2.5),
    lambda: TopK(3, temperature=0.0),
    lambda: TopP(0.0),
    lambda: TopP(1.5),
    lambda: TopP(-0.1),
    lambda: TopP(0.5, temperature=-2.0),
  ):
    with pytest.raises(ValueError):
      bad()
  with pytest.raises(ValueError, match="unknown sampler"):
    sampler_from_config("nucleus")
  with pytest.raises(ValueError, match="beam_search"):
    sampler_from_config("beam")
  with pytest.raises(ValueError, match="top_k"):
    sampler_from_config("top_k")
  with pytest.raises(ValueError, match="top_p"):
    sampler_from_config("top_p")
  step = first_order_step(np.zeros((5, 5)))
  with pytest.raises(ValueError, match="max_new_tokens"):
    decode(step, {"calls": jnp.zeros(1)}, jnp.zeros(1, jnp.int32), 0, 0, Greedy(), jax.random.key(0), EOS, PAD)
  with pytest.raises(ValueError, match="beam_size"):
    beam_search(step, {"calls": jnp.zeros(1)}, jnp.zeros(1, jnp.int32), 0, 3, 0, EOS, PAD)


def test_sampler_from_config():
  assert sampler_from_config("greedy") == Greedy()
  assert sampler_from_config("temperature", temperature=0.5) == Temperature(0.5)
  assert sampler_from_config("top_k", temperature=0.7, top_k=5) == TopK(5, 0.7)
  assert sampler_from_config("top_p", top_p=0.9) == TopP(0.9, 1.0)


def test_top_k_never_leaves_the_top_k():
  logits = jax.random.normal(jax.random.key(1), (10,)) * 2.0
  top3 = set(np.argsort(-np.asarray(logits))[:3].tolist())
  draws = np.asarray(TopK(3, temperature=2.0)(jnp.tile(logits, (5000, 1)), jax.random.key(2)))
  assert set(draws.tolist()) == top3  # all of the top 3 occur, nothing else does
  # k >= V degrades to temperature sampling instead of failing.
  assert TopK(50)(logits[None], jax.random.key(3)).shape == (1,)


def test_top_p_kept_set_is_hand_computed():
  probs = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 1 (.5), 3 (.3), 2 (.15), 0 (.05)
  logits = jnp.log(jnp.asarray(probs, jnp.float32))[None]
  # keep a token iff the mass of strictly more likely tokens is < p
  expected = {0.45: {1}, 0.7: {1, 3}, 0.9: {1, 3, 2}, 0.97: {0, 1, 2, 3}, 1.0: {0, 1, 2, 3}}
  for p, kept in expected.items():
    mask = np.asarray(TopP(p).keep_mask(logits))[0]
    assert set(np.flatnonzero(mask).tolist()) == kept, p
  # Mass exactly p is enough: with 4 equal logits (probabilities exactly 1/4) p = 1/2 keeps 2 tokens.
  assert [int(TopP(p).keep_mask(jnp.zeros((1, 4))).sum()) for p in (0.25, 0.5, 0.75, 0.76)] == [1, 2, 3, 4]
  draws = np.asarray(TopP(0.7)(jnp.tile(logits, (3000, 1)), jax.random.key(0)))
  assert set(draws.tolist()) == {1, 3}
  # Temperature is applied before the cut: at t=0.25 probabilities go as probs**4, and the top
  # token alone holds .5^4 / (.5^4 + .3^4 + .15^4 + .05^4) = 0.878, so {1} at p=0.85, {1, 3} at 0.9.
  assert set(np.flatnonzero(np.asarray(TopP(0.85, temperature=0.25).keep_mask(logits))[0])) == {1}
  assert set(np.flatnonzero(np.asarray(TopP(0.9, temperature=0.25).keep_mask(logits))[0])) == {1, 3}


def test_top_p_with_tiny_p_is_greedy():
  logits = jax.random.normal(jax.random.key(4), (64, 50))
  for seed in range(2):
    np.testing.assert_array_equal(TopP(1e-6)(logits, jax.random.key(seed)), Greedy()(logits, None))


def test_temperature_frequencies_match_softmax():
  t, n = 0.7, 20000
  logits = jnp.array([1.0, 0.5, 0.0, -0.5, -2.0])
  draws = np.asarray(Temperature(t)(jnp.tile(logits, (n, 1)), jax.random.key(5)))
  expected = n * np.exp(log_softmax64(np.asarray(logits) / t))
  observed = np.bincount(draws, minlength=5)
  chi2 = ((observed - expected) ** 2 / expected).sum()
  assert chi2 < 18.47, (chi2, observed, expected)  # 99.9% quantile of chi-square with 4 dof


# ------------------------------------------------------------------------------------------ decode


def greedy_reference(table, first, max_new, eos, pad):
  """The plain Python loop decode(Greedy()) must reproduce."""
  out = []
  for tok in first:
    row, done = [], False
    for _ in range(max_new):
      tok = pad if done else int(np.argmax(table[tok]))
      done = done or tok == eos
      row.append(tok)
    out.append(row)
  return np.array(out)


def test_greedy_decode_matches_python_loop():
  table = np.array(jax.random.normal(jax.random.key(6), (5, 5)))
  table[:, PAD] = -1e9  # the chain never emits pad, so pads in the output come from EOS handling
  first = jnp.array([0, 1, 2, 3, 0], jnp.int32)
  cache = {"calls": jnp.zeros((5,), jnp.int32)}
  got = decode(first_order_step(table), cache, first, 7, 6, Greedy(), jax.random.key(0), EOS, PAD)
  np.testing.assert_array_equal(got, greedy_reference(table, np.asarray(first), 6, EOS, PAD))


def test_decode_feeds_positions_from_start_index():
  v = 16

  def step_fn(tokens, cache, index):  # always predicts index + 1
    return jnp.tile(jax.nn.one_hot(index + 1, v), (tokens.shape[0], 1)), cache

  got = decode(step_fn, {}, jnp.zeros(2, jnp.int32), 5, 4, Greedy(), jax.random.key(0), None, 0)
  np.testing.assert_array_equal(got, [[6, 7, 8, 9]] * 2)


def test_eos_pads_afterwards_and_early_exit():
  # Deterministic chain 0 -> 1 -> 2 -> EOS -> 0.
  table = np.full((5, 5), -1e9)
  for a, b in [(0, 1), (1, 2), (2, EOS), (EOS, 0), (PAD, 0)]:
    table[a, b] = 0.0
  step = first_order_step(table)
  first = jnp.array([0, 2, 1], jnp.int32)
  cache = {"calls": jnp.zeros((3,), jnp.int32)}
  expected = [[1, 2, EOS, PAD, PAD, PAD], [EOS, PAD, PAD, PAD, PAD, PAD], [2, EOS, PAD, PAD, PAD, PAD]]
  for sampler in (Greedy(), TopP(0.9)):  # every sampler must drop the -1e9 transitions
    got = decode(step, cache, first, 0, 6, sampler, jax.random.key(1), EOS, PAD)
    np.testing.assert_array_equal(got, expected)
  # Without an EOS id the chain just keeps cycling.
  got = decode(step, cache, first, 0, 6, Greedy(), jax.random.key(1), None, PAD)
  np.testing.assert_array_equal(got[0], [1, 2, EOS, 0, 1, 2])


def test_decode_under_jit_and_sampling_is_seeded():
  table = jax.random.normal(jax.random.key(7), (5, 5))
  step = first_order_step(table)
  run = jax.jit(lambda cache, first, start, rng: decode(step, cache, first, start, 8, TopK(3), rng, EOS, PAD))
  cache, first = {"calls": jnp.zeros((4,), jnp.int32)}, jnp.arange(4, dtype=jnp.int32)
  a, b = run(cache, first, 0, jax.random.key(0)), run(cache, first, 3, jax.random.key(0))
  np.testing.assert_array_equal(a, b)  # a first-order chain ignores the position
  assert a.shape == (4, 8) and a.dtype == jnp.int32


# ------------------------------------------------------------------------------------- beam search


def test_beam_one_equals_greedy():
  table = np.array(jax.random.normal(jax.random.key(0), (5, 5, 5)) * 2.0)
  table[..., PAD] = -1e9
  step = second_order_step(table)
  first, prev = np.array([0, 1, 2, 0, 3, 1]), np.array([1, 1, 0, 2, 0, 3])
  cache = {"prev": jnp.asarray(prev, jnp.int32)}
  greedy = np.asarray(decode(step, cache, first, 0, 6, Greedy(), jax.random.key(0), EOS, PAD))
  tokens, scores = beam_search(step, cache, first, 0, 6, 1, EOS, PAD, length_penalty=0.6)
  np.testing.assert_array_equal(tokens, greedy)
  assert (greedy == PAD).any() and not (greedy == PAD).all()  # some rows ended, some did not
  # The score is the greedy path's log-prob over the GNMT normaliser of its length.
  logp = log_softmax64(table)
  for r in range(len(first)):
    p, t, total, length = prev[r], first[r], 0.0, 0
    for s in greedy[r]:
      if s == PAD:
        break
      total, length, p, t = total + logp[p, t, s], length + 1, t, s
    np.testing.assert_allclose(scores[r], total / ((5 + length) / 6) ** 0.6, rtol=1e-5)


def test_beam_beats_myopic_greedy():
  # Tokens: 0 start, 1 "A", 2 "B", 3 EOS. From start A is likelier (.6 vs .4), but A's best
  # continuation has prob .3 (total .18) while B -> A has .9 (total .36).
  probs = np.array(
    [
      [0.0, 0.6, 0.4, 0.0],
      [0.3, 0.25, 0.25, 0.2],
      [0.05, 0.9, 0.03, 0.02],
      [0.25, 0.25, 0.25, 0.25],
    ]
  )
  step = first_order_step(np.log(probs + 1e-30))
  first, cache = jnp.zeros((1,), jnp.int32), {"calls": jnp.zeros((1,), jnp.int32)}
  greedy = decode(step, cache, first, 0, 2, Greedy(), jax.random.key(0), EOS, PAD)
  np.testing.assert_array_equal(greedy, [[1, 0]])
  tokens, scores = beam_search(step, cache, first, 0, 2, 2, EOS, PAD, length_penalty=0.0)
  np.testing.assert_array_equal(tokens, [[2, 1]])
  np.testing.assert_allclose(scores, [np.log(0.36)], rtol=1e-6)


def brute_force(logp, prev, tok, max_new, eos, pad, alpha):
  """Best (tokens, normalised score) over every token sequence, in float64."""
  scores = {}
  for seq in itertools.product(range(logp.shape[-1]), repeat=max_new):
    total, out, p, t = 0.0, [], prev, tok
    for s in seq:
      total += logp[p, t, s]
      out.append(s)
      if s == eos:
        break
      p, t = t, s
    length = len(out)
    scores[tuple(out + [pad] * (max_new - length))] = total / ((5 + length) / 6) ** alpha
  ranked = sorted(scores.items(), key=lambda kv: -kv[1])
  assert ranked[0][1] - ranked[1][1] > 1e-4  # a clear winner, so float32 cannot flip it
  return ranked[0]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_beam_search_is_exact_when_nothing_is_pruned(alpha):
  v, max_new, pad = 4, 4, 0  # vocab 0..3 with EOS = 3; pad is a real token, as in many tokenizers
  # Peaked transitions with a damped EOS give optima of every length (1, 3 and 4 tokens here) that
  # change with alpha; the winners' prefixes are not the best-ranked ones at every step, so a beam
  # search that forgets to reorder the cache with its beams fails this test.
  table = np.array(jax.random.normal(jax.random.key(11), (v, v, v)) * 3.0)
  table[:, :, EOS] -= 1.0
  step = second_order_step(table)
  first, prev = np.array([0, 2, 1]), np.array([1, 0, 2])
  cache = {"prev": jnp.asarray(prev, jnp.int32)}
  search = jax.jit(
    functools.partial(
      beam_search,
      step,
      max_new_tokens=max_new,
      beam_size=v ** (max_new - 1),
      eos_id=EOS,
      pad_id=pad,
      length_penalty=alpha,
    )
  )
  tokens, scores = search(cache, first, 0)
  logp = log_softmax64(table)
  for r in range(3):
    best, best_score = brute_force(logp, prev[r], first[r], max_new, EOS, pad, alpha)
    np.testing.assert_array_equal(tokens[r], best)
    np.testing.assert_allclose(scores[r], best_score, rtol=1e-5)


def test_length_normalizer_is_gnmt():
  np.testing.assert_allclose(length_normalizer(jnp.array([1, 3, 7]), 0.6), [1.0, (8 / 6) ** 0.6, 2.0**0.6], rtol=1e-6)
  np.testing.assert_allclose(length_normalizer(jnp.array([4]), 0.0), [1.0])
