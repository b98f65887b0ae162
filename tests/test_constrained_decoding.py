"""The location-token constraint of decode / beam_search (location_range): inside a box (1-3 location
tokens emitted) only location tokens are allowed. Checked against a plain Python state machine on the
same logits, against brute-force search, and through LocationTokens.parse of the decoded text."""

import functools
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.location_tokens import LocationTokens
from mmjax.sample.generate import GenerateOptions, generate, options_from_config
from mmjax.sample.samplers import (
  Greedy,
  Temperature,
  TopK,
  TopP,
  beam_search,
  decode,
  length_normalizer,
  location_mask,
  next_open_count,
)
from mmjax.tokenizer import Tokenizer

PAD, BOS, EOS, UNK = 0, 1, 2, 3
V, LOC0, NUM_BINS = 40, 24, 16  # text ids 4..23, location ids 24..39
RANGE = (LOC0, LOC0 + NUM_BINS)
T = 13  # not a multiple of 4: some boxes are cut by max_new_tokens
ROWS = 64


def _table(seed, rows=ROWS, t=T, v=V, loc0=LOC0, loc_bias=1.0, eos_bias=0.5):
  """Random per-row, per-position logits float32 [rows, t, v]; pad / bos / unk never win."""
  g = np.random.default_rng(seed)
  table = g.normal(size=(rows, t, v)).astype(np.float32) * 2
  table[..., loc0:] += loc_bias  # boxes get opened often
  table[..., EOS] += eos_bias
  table[..., [PAD, BOS, UNK]] = -1e9
  return table


TRANS = np.random.default_rng(123).normal(size=(V, V)).astype(np.float32)


def step_fn(tokens, cache, index):
  """logits = table[row, index] + TRANS[last token]: depends on the row, the position and the token."""
  logits = jnp.take(cache["table"], index, axis=1) + jnp.asarray(TRANS)[tokens]
  return logits, cache


@functools.lru_cache(maxsize=None)
def _run(sampler, location_range):
  return jax.jit(
    lambda table, rng: decode(
      step_fn,
      {"table": table},
      jnp.full((table.shape[0],), BOS, jnp.int32),
      0,
      T,
      sampler,
      rng,
      EOS,
      PAD,
      location_range,
    )
  )


def _logits(table, row, i, prev):
  return table[row, i] + TRANS[prev]


def _allowed(open_count):
  """The hand-written rule: inside a box only location ids; outside anything."""
  ids = np.arange(V)
  return (ids >= LOC0) & (ids < LOC0 + NUM_BINS) if open_count else np.ones(V, bool)


def _reference(table, pick):
  """The state machine in plain Python; pick(i, masked logits [rows, V]) -> tokens [rows]."""
  rows = table.shape[0]
  prev, open_count, done = [BOS] * rows, [0] * rows, [False] * rows
  out = np.full((rows, T), PAD, np.int32)
  for i in range(T):
    masked = np.stack(
      [np.where(_allowed(open_count[r]), _logits(table, r, i, prev[r]), -np.inf) for r in range(rows)]
    ).astype(np.float32)
    picked = pick(i, masked)
    for r in range(rows):
      tok = PAD if done[r] else int(picked[r])
      if open_count[r]:
        assert LOC0 <= tok < LOC0 + NUM_BINS or done[r]
      open_count[r] = (open_count[r] + 1) % 4 if LOC0 <= tok < LOC0 + NUM_BINS else 0
      done[r] = done[r] or tok == EOS
      prev[r] = tok
      out[r, i] = tok
    if all(done):
      break
  return out


def _runs(row):
  """[(start, length)] of the maximal runs of location ids in a row."""
  is_loc = [LOC0 <= t < LOC0 + NUM_BINS for t in row]
  out, start = [], None
  for i, x in enumerate(is_loc + [False]):
    if x and start is None:
      start = i
    if not x and start is not None:
      out.append((start, i - start))
      start = None
  return out


def _violations(out):
  """Rows with a box cut by anything but max_new_tokens (a run of location ids whose length is not a
  multiple of 4 that does not reach the last column, e.g. followed by EOS or text)."""
  bad = []
  for r, row in enumerate(np.asarray(out).tolist()):
    for start, length in _runs(row):
      if length % 4 and start + length < len(row):
        bad.append(r)
  return bad


def _eos_inside_box(out):
  for row in np.asarray(out).tolist():
    open_count = 0
    for t in row:
      if t == EOS and open_count:
        return True
      open_count = (open_count + 1) % 4 if LOC0 <= t < LOC0 + NUM_BINS else 0
  return False


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_the_python_state_machine(seed):
  table = _table(seed)
  got = np.asarray(_run(Greedy(), RANGE)(table, jax.random.key(seed)))
  want = _reference(table, lambda i, masked: np.argmax(masked, axis=-1))
  np.testing.assert_array_equal(got, want)
  assert not _violations(got) and not _eos_inside_box(got)
  # The same logits without the constraint do cut boxes, so the check above has teeth.
  free = np.asarray(_run(Greedy(), None)(table, jax.random.key(seed)))
  assert _violations(free) and not np.array_equal(free, got)


@pytest.mark.parametrize("sampler", [TopK(5), TopK(3, temperature=2.0), TopP(0.9), Temperature(1.5)])
def test_sampling_matches_the_python_state_machine(sampler):
  for seed in range(3):
    table, rng = _table(100 + seed), jax.random.key(seed)
    got = np.asarray(_run(sampler, RANGE)(table, rng))
    # The same sampler on the reference's masked logits with the same per-step keys.
    want = _reference(table, lambda i, masked: np.asarray(sampler(jnp.asarray(masked), jax.random.fold_in(rng, i))))
    np.testing.assert_array_equal(got, want)
    assert not _violations(got) and not _eos_inside_box(got)
    assert any(length == 4 for row in got.tolist() for _, length in _runs(row))  # boxes do occur
  free = np.asarray(_run(sampler, None)(table, rng))
  assert _violations(free)


def _decode_before(step_fn, cache, first_tokens, start_index, max_new_tokens, sampler, rng, eos_id, pad_id):
  """decode as it was before location_range existed (copied verbatim), for the bit-identity check."""
  first_tokens = jnp.asarray(first_tokens, jnp.int32)
  n = first_tokens.shape[0]
  start_index = jnp.asarray(start_index, jnp.int32)

  def cond(state):
    i, _, _, done, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, tokens, cache, done, out = state
    logits, cache = step_fn(tokens, cache, start_index + i)
    nxt = sampler(logits, jax.random.fold_in(rng, i))
    nxt = jnp.where(done, pad_id, nxt).astype(jnp.int32)
    if eos_id is not None:
      done = done | (nxt == eos_id)
    return i + 1, nxt, cache, done, out.at[:, i].set(nxt)

  out = jnp.full((n, max_new_tokens), pad_id, jnp.int32)
  state = (jnp.int32(0), first_tokens, cache, jnp.zeros((n,), bool), out)
  return jax.lax.while_loop(cond, body, state)[-1]


@pytest.mark.parametrize("sampler", [Greedy(), TopK(4), TopP(0.8), Temperature(0.7)])
def test_without_constraint_output_is_unchanged(sampler):
  first = jnp.full((ROWS,), BOS, jnp.int32)
  run_before = jax.jit(lambda tb, rng: _decode_before(step_fn, {"table": tb}, first, 0, T, sampler, rng, EOS, PAD))
  for seed in range(3):
    table, rng = _table(200 + seed), jax.random.key(seed)
    before = run_before(table, rng)
    np.testing.assert_array_equal(_run(sampler, None)(table, rng), before)
  # Eagerly (no outer jit) as well.
  np.testing.assert_array_equal(decode(step_fn, {"table": table}, first, 0, T, sampler, rng, EOS, PAD), before)


def test_hand_computed_box_is_completed_before_eos():
  # Position 0: location 24 wins; then EOS wins by far, location 30 is the best location id.
  logits = np.full((T, V), -50.0, np.float32)
  logits[0, 24] = 5.0
  logits[1:, EOS] = 10.0
  logits[1:, 30] = 1.0
  fixed = lambda tokens, cache, index: (jnp.tile(jnp.asarray(logits)[index], (tokens.shape[0], 1)), cache)
  first = jnp.full((2,), BOS, jnp.int32)
  args = (fixed, {}, first, 0, 8, Greedy(), jax.random.key(0), EOS, PAD)
  np.testing.assert_array_equal(decode(*args, location_range=RANGE)[0], [24, 30, 30, 30, EOS, PAD, PAD, PAD])
  np.testing.assert_array_equal(decode(*args)[0], [24, EOS, PAD, PAD, PAD, PAD, PAD, PAD])
  # Beam search too: a hypothesis ending inside a box does not exist.
  tokens, _ = beam_search(fixed, {}, first, 0, 8, 3, EOS, PAD, location_range=RANGE)
  np.testing.assert_array_equal(tokens[0], [24, 30, 30, 30, EOS, PAD, PAD, PAD])


def test_mask_and_state_helpers():
  logits = jnp.zeros((4, V))
  masked = np.asarray(location_mask(logits, jnp.array([0, 1, 2, 3]), RANGE))
  assert np.all(masked[0] == 0)
  for r in (1, 2, 3):
    assert np.all(np.isinf(masked[r, :LOC0])) and np.all(masked[r, LOC0:] == 0)
  tokens = jnp.array([LOC0, LOC0 + 15, 5, EOS, LOC0])
  np.testing.assert_array_equal(next_open_count(tokens, jnp.array([0, 3, 0, 0, 2]), RANGE), [1, 0, 0, 0, 3])


def test_invalid_location_range():
  args = (step_fn, {"table": _table(0, rows=2)}, jnp.full((2,), BOS, jnp.int32), 0, 4, Greedy(), jax.random.key(0))
  for bad, match in [
    ((5, 5), "0 <= start < stop"),
    ((-1, 3), "0 <= start < stop"),
    ((0, 10), "eos_id 2"),
    ("ab", "start, stop"),
    ((LOC0, V + 1), "does not fit"),
  ]:
    with pytest.raises(ValueError, match=match):
      decode(*args, EOS, PAD, location_range=bad)
  with pytest.raises(ValueError, match="pad_id 30"):
    decode(*args, EOS, 30, location_range=RANGE)
  with pytest.raises(ValueError, match="eos_id"):
    beam_search(
      step_fn, {"table": _table(0, rows=2)}, jnp.full((2,), BOS, jnp.int32), 0, 4, 2, 30, PAD, location_range=RANGE
    )


# ------------------------------------------------------------------------------------- beam search

BV, BT, BRANGE = 7, 5, (5, 7)  # pad 0, bos 1, eos 2, text 3 and 4, location ids 5 and 6


def _brute_force(table, trans, alpha):
  """Best (length-normalised score, tokens) over every sequence allowed by the constraint."""
  logp = lambda r, i, prev: np.asarray(jax.nn.log_softmax(jnp.asarray(table[r, i] + trans[prev])), np.float64)
  best = []
  for r in range(table.shape[0]):
    found = []

    def walk(seq, prev, open_count, score):
      if len(seq) == BT or (seq and seq[-1] == EOS):
        found.append((score / float(length_normalizer(jnp.asarray(len(seq)), alpha)), seq))
        return
      lp = logp(r, len(seq), prev)
      for tok in range(BV):
        is_loc = BRANGE[0] <= tok < BRANGE[1]
        if open_count and not is_loc:
          continue
        walk(seq + [tok], tok, (open_count + 1) % 4 if is_loc else 0, score + lp[tok])

    walk([], BOS, 0, 0.0)
    found.sort(key=lambda x: -x[0])
    best.append((found[0], found[1][0]))
  return best


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_is_exact_under_the_constraint(alpha):
  g = np.random.default_rng(7)
  rows = 6
  table = g.normal(size=(rows, BT, BV)).astype(np.float32) * 2
  table[..., 5:] += 3.0  # boxes are likely, so that the constraint binds
  trans = g.normal(size=(BV, BV)).astype(np.float32)

  def step(tokens, cache, index):
    return jnp.take(cache["table"], index, axis=1) + jnp.asarray(trans)[tokens], cache

  first = jnp.full((rows,), BOS, jnp.int32)
  tokens, scores = beam_search(
    step, {"table": table}, first, 0, BT, BV ** (BT - 1), EOS, PAD, alpha, location_range=BRANGE
  )
  for r, ((score, seq), second) in enumerate(_brute_force(table, trans, alpha)):
    assert scores[r] == pytest.approx(score, rel=1e-4, abs=1e-4)
    if score - second > 1e-3:
      np.testing.assert_array_equal(tokens[r], seq + [PAD] * (BT - len(seq)))
  is_loc = lambda x: BRANGE[0] <= x < BRANGE[1]
  assert any(all(map(is_loc, row[i : i + 4])) for row in np.asarray(tokens).tolist() for i in range(BT - 3))
  free, _ = beam_search(step, {"table": table}, first, 0, BT, BV ** (BT - 1), EOS, PAD, alpha)
  assert not np.array_equal(free, tokens)  # the unconstrained optimum cuts a box somewhere
  for row in np.asarray(tokens).tolist():
    open_count = 0
    for t in row:
      assert not (open_count and not BRANGE[0] <= t < BRANGE[1] and t != PAD), row
      open_count = (open_count + 1) % 4 if BRANGE[0] <= t < BRANGE[1] else 0


def test_beam_search_random_rows_keep_boxes_whole():
  table = _table(300, rows=8)
  first = jnp.full((8,), BOS, jnp.int32)
  tokens, _ = jax.jit(lambda tb: beam_search(step_fn, {"table": tb}, first, 0, T, 4, EOS, PAD, location_range=RANGE))(
    table
  )
  assert not _violations(tokens) and not _eos_inside_box(tokens)
  free, _ = jax.jit(lambda tb: beam_search(step_fn, {"table": tb}, first, 0, T, 4, EOS, PAD))(table)
  assert _violations(free)


# ------------------------------------------------------------------- text, parse and options/generate


@pytest.fixture(scope="module")
def tok():
  texts = ["a red circle and a blue square", "the dog is left of the cat", "detect dog ; cat ; red circle"] * 3
  return Tokenizer.train(texts, None, 300, location_bins=NUM_BINS)


def test_decoded_boxes_parse(tok):
  """Decoded token streams of a model over the tokenizer's vocabulary: every whole box parses."""
  v, loc0 = tok.vocab_size, tok.locations.first_id
  rows, t = 48, 16
  g = np.random.default_rng(11)
  trans = g.normal(size=(v, v)).astype(np.float32)
  # Location ids are likely; right after a closed box (4 in a row) comes a word, as a trained model
  # would do, so that boxes are separated by labels.
  trans[:, loc0:] += 3.0
  pieces = [tok.id_to_piece(i) for i in range(v)]
  words = np.array([UNK < i < loc0 and p[0] != "<" and any(c.isalpha() for c in p) for i, p in enumerate(pieces)])
  assert words.sum() > 20

  def step(tokens, cache, index):
    logits = jnp.take(cache["table"], index, axis=1) + jnp.asarray(trans)[tokens]
    is_loc = tokens >= loc0
    open_count = jnp.where(is_loc, (cache["open"] + 1) % 4, 0)  # the model's own box bookkeeping
    after_box = is_loc & (open_count == 0)
    logits = jnp.where(after_box[:, None] & ~jnp.asarray(words), -1e9, logits)
    return logits.at[:, [PAD, BOS, UNK]].set(-1e9), {**cache, "open": open_count}

  loc = tok.locations
  total = 0
  for seed in range(3):
    table = np.random.default_rng(seed).normal(size=(rows, t, v)).astype(np.float32)
    cache = {"table": table, "open": jnp.zeros((rows,), jnp.int32)}
    first = jnp.full((rows,), BOS, jnp.int32)
    out = decode(step, cache, first, 0, t, TopK(8), jax.random.key(seed), EOS, PAD, location_range=(loc0, v))
    for row in np.asarray(out).tolist():
      text = tok.decode(row)
      # Expected boxes from the ids: each run of exactly 4 location ids (not cut at the end) whose
      # corners are ordered (parse skips y1 < y0 and x1 < x0: a model error, not a cut box).
      runs, expected = [], []
      stop = row.index(EOS) if EOS in row else len(row)
      for i, x in enumerate(row[:stop]):
        if x >= loc0 and (i == 0 or row[i - 1] < loc0):
          runs.append([])
        if x >= loc0:
          runs[-1].append(x - loc0)
      cut = stop == len(row) and row[-1] >= loc0 and len(runs[-1]) % 4 != 0  # by max_new_tokens
      whole = runs[:-1] if cut else runs
      assert all(len(r) % 4 == 0 for r in whole), row
      for r in whole:
        if len(r) == 4 and r[2] >= r[0] and r[3] >= r[1]:
          expected.append(loc.box([loc0 + b for b in r]))
      got = [b for _, b in loc.parse(text)]
      assert got == expected, (text, row)
      total += len(expected)
  assert total > 20


def test_options_from_config_fills_location_range(tok):
  config = types.SimpleNamespace(
    sampler=types.SimpleNamespace(name="greedy", max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0, beam_size=4),
    data=types.SimpleNamespace(max_target_len=16),
  )
  opts = options_from_config(config, tok)
  assert opts.location_range == (tok.vocab_size - NUM_BINS, tok.vocab_size)
  plain = Tokenizer(tok.model_proto)
  assert options_from_config(config, plain).location_range is None
  assert options_from_config(config, plain) == GenerateOptions(8, 1, 2, 0, "greedy", 1.0, 0, 1.0, 4)


class _FakeModel:
  """Just enough of a VisionLanguageModel for generate(): logits favour a location id at position 0
  and EOS afterwards (location 30 second best)."""

  def prefill_length(self, cond):
    return 0

  def apply(self, variables, *args, method=None, mutable=None, **kwargs):
    if method == "encode":
      return jnp.zeros((args[0].shape[0], 2))
    tokens, _, index = args
    b, n = tokens.shape
    logits = jnp.full((V,), -50.0).at[EOS].set(10.0).at[30].set(1.0)
    logits = jnp.where(index == 0, jnp.full((V,), -50.0).at[24].set(5.0), logits)
    return jnp.tile(logits, (b, n, 1)), {"cache": {"k": jnp.zeros((b, 3))}}


@pytest.mark.parametrize("sampler", ["greedy", "beam"])
def test_generate_passes_the_constraint(sampler):
  images = jnp.zeros((2, 4, 4, 3))
  run = lambda opts: np.asarray(generate(_FakeModel(), {}, images, None, None, jax.random.key(0), opts))
  base = dict(max_new_tokens=6, bos_id=BOS, eos_id=EOS, pad_id=PAD, sampler=sampler, beam_size=2)
  np.testing.assert_array_equal(run(GenerateOptions(**base, location_range=RANGE))[0], [24, 30, 30, 30, EOS, PAD])
  np.testing.assert_array_equal(run(GenerateOptions(**base))[0], [24, EOS, PAD, PAD, PAD, PAD])


def test_every_box_in_random_constrained_output_is_whole():
  """Many seeds and rows, property only: no cut box except by max_new_tokens."""
  for seed, sampler in itertools.product(range(4), [Greedy(), TopK(6)]):
    out = np.asarray(_run(sampler, RANGE)(_table(400 + seed, loc_bias=2.0, eos_bias=1.5), jax.random.key(seed)))
    assert not _violations(out) and not _eos_inside_box(out)


def test_location_tokens_range_matches_tokenizer(tok):
  assert LocationTokens.for_vocab(tok.vocab_size - NUM_BINS, NUM_BINS) == tok.locations
