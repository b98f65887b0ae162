"""Autoregressive decoding that is generic over the model through one step-function contract.

  step_fn(tokens: int32 [N], cache: pytree, index: int32 scalar) -> (logits float [N, V], new_cache)

`index` is the position of `tokens` in the sequence, and every cache leaf has the batch as its
leading dim N; that is all `decode` and `beam_search` assume, so any model (KV cache, recurrent
state, a toy Markov table) plugs in. new_cache must keep the cache's structure, shapes and dtypes
(it is a lax.while_loop carry). Rows that are done keep being fed (pad_id at later positions) until
every row is done, since the batch runs in lockstep.

Samplers are frozen dataclasses (hashable, so they can be static arguments of `jax.jit`) that map
logits [N, V] and a PRNG key to tokens int32 [N]:

  Greedy()                      argmax.
  Temperature(t)                sample from softmax(logits / t).
  TopK(k, temperature=1.0)      sample among the k largest logits (at temperature).
  TopP(p, temperature=1.0)      nucleus: the smallest set of most likely tokens whose probability
                                (at temperature) sums to >= p; the top token is always kept.

`decode` and `beam_search` are traceable: wrap them in `jax.jit` with `step_fn`, the sampler,
`max_new_tokens`, `beam_size`, `eos_id`, `pad_id`, `length_penalty` and `location_range` static.

Location constraint (grounding): with `location_range=(start, stop)`, the ids [start, stop) of the
location tokens (mmjax.location_tokens.LocationTokens: first_id, stop), a box is 4 location tokens in
a row. Each row carries `open` int32, the location tokens emitted in its current box (0..3). While a
box is open (open > 0) only location tokens are allowed, so EOS (and text) cannot cut a box; outside a
box (open == 0) anything is allowed, a location token opening a new box. The mask (-inf outside the
allowed set) is applied to the logits before the sampler in `decode`, so greedy, temperature, top-k
and top-p all sample from the renormalised allowed set; in `beam_search` it is applied to the
log-probabilities (the model's own, not renormalised, as in Hugging Face's constrained beam search).
Rows start with open = 0 (the prompt must not end inside a box). The only outputs that end inside a
box are those cut by max_new_tokens. Without location_range nothing changes (bit-identical output).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

StepFn = Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any]]

__all__ = [
  "Sampler",
  "Greedy",
  "Temperature",
  "TopK",
  "TopP",
  "sampler_from_config",
  "decode",
  "beam_search",
  "length_normalizer",
  "nucleus_mask",
  "location_mask",
  "next_open_count",
]


class Sampler(Protocol):
  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    """logits [N, V], PRNG key -> tokens int32 [N]."""


def _check_temperature(t: float, who: str) -> None:
  if not t > 0:  # `not >` also rejects NaN
    raise ValueError(f"{who}: temperature must be > 0, got {t}.")


def _scaled(logits: jax.Array, t: float) -> jax.Array:
  # float32 so that bf16 logits do not lose the small differences that decide sampling.
  return logits.astype(jnp.float32) / t


# Samplers are hashable, so methods can be jitted with `self` static: eager calls then cost one
# compilation per (sampler, shape) instead of op-by-op dispatch; inside a trace it is a no-op.
_jit_method = functools.partial(jax.jit, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class Greedy:
  @_jit_method
  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    del rng
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Temperature:
  t: float

  def __post_init__(self):
    _check_temperature(self.t, "Temperature")

  @_jit_method
  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    return jax.random.categorical(rng, _scaled(logits, self.t), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class TopK:
  k: int
  temperature: float = 1.0

  def __post_init__(self):
    if int(self.k) != self.k or self.k < 1:
      raise ValueError(f"TopK: k must be an integer >= 1, got {self.k}.")
    _check_temperature(self.temperature, "TopK")

  @_jit_method
  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    k = min(int(self.k), logits.shape[-1])  # k >= V means plain temperature sampling
    vals, idx = jax.lax.top_k(_scaled(logits, self.temperature), k)
    choice = jax.random.categorical(rng, vals, axis=-1)
    return jnp.take_along_axis(idx, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@jax.jit
def nucleus_mask(logits: jax.Array, p, temperature=1.0) -> jax.Array:
  """bool [N, V]: the top-p nucleus of each row of logits [N, V].

  Tokens are sorted by probability (at `temperature`, which is applied before the cut, as in
  Hugging Face's warper order); a token is kept iff the probability mass strictly before it is
  < p. That is exactly the smallest prefix whose mass reaches p, and the top token (mass before
  it 0) is always kept. Ties in probability are broken by the sort, i.e. arbitrarily. p and
  temperature are traced, so sweeping them does not recompile.
  """
  scaled = _scaled(logits, temperature)
  order = jnp.argsort(-scaled, axis=-1)
  probs = jax.nn.softmax(jnp.take_along_axis(scaled, order, axis=-1), axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  # p >= 1 keeps everything; testing mass < 1 could drop the tail to float32 rounding.
  keep_sorted = (mass_before < p) | (p >= 1)
  # Scatter the sorted decision back to vocabulary order.
  rows = jnp.arange(logits.shape[0])[:, None]
  return jnp.zeros(logits.shape, bool).at[rows, order].set(keep_sorted)


@dataclasses.dataclass(frozen=True)
class TopP:
  p: float
  temperature: float = 1.0

  def __post_init__(self):
    if not 0 < self.p <= 1:
      raise ValueError(f"TopP: p must be in (0, 1], got {self.p}.")
    _check_temperature(self.temperature, "TopP")

  def keep_mask(self, logits: jax.Array) -> jax.Array:
    """bool [N, V]: the nucleus of each row (see `nucleus_mask`)."""
    return nucleus_mask(logits, self.p, self.temperature)

  @_jit_method
  def __call__(self, logits: jax.Array, rng: jax.Array) -> jax.Array:
    scaled = jnp.where(self.keep_mask(logits), _scaled(logits, self.temperature), -jnp.inf)
    return jax.random.categorical(rng, scaled, axis=-1).astype(jnp.int32)


SAMPLER_NAMES = ("greedy", "temperature", "top_k", "top_p")


def sampler_from_config(
  name: str, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Sampler:
  """Maps a config string to a sampler. "beam" is not a sampler: call `beam_search` instead."""
  if name == "greedy":
    return Greedy()
  if name == "temperature":
    return Temperature(temperature)
  if name == "top_k":
    if top_k is None:
      raise ValueError("sampler 'top_k' needs top_k.")
    return TopK(top_k, temperature)
  if name == "top_p":
    if top_p is None:
      raise ValueError("sampler 'top_p' needs top_p.")
    return TopP(top_p, temperature)
  if name == "beam":
    raise ValueError("'beam' is a search, not a sampler: the caller must use beam_search().")
  raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES} (or 'beam').")


def _check_lengths(max_new_tokens: int) -> None:
  # Static: it sizes the output buffer.
  if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens}.")


BOX_SIZE = 4  # location tokens per box: y0, x0, y1, x1


def _check_location_range(location_range, eos_id: int | None, pad_id: int) -> tuple[int, int] | None:
  """Static checks of location_range (None or (start, stop) with 0 <= start < stop; eos/pad outside)."""
  if location_range is None:
    return None
  try:
    start, stop = location_range
  except (TypeError, ValueError):
    raise ValueError(f"location_range must be (start, stop) token ids, got {location_range!r}.") from None
  ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (start, stop))
  if not ints or not 0 <= start < stop:
    raise ValueError(f"location_range must be (start, stop) ids with 0 <= start < stop, got {location_range!r}.")
  for name, i in (("eos_id", eos_id), ("pad_id", pad_id)):
    if i is not None and start <= i < stop:
      raise ValueError(f"{name} {i} lies inside location_range [{start}, {stop}): it must not be a location id.")
  return int(start), int(stop)


def _is_location(tokens: jax.Array, location_range: tuple[int, int]) -> jax.Array:
  start, stop = location_range
  return (tokens >= start) & (tokens < stop)


def location_mask(logits: jax.Array, open_count: jax.Array, location_range: tuple[int, int]) -> jax.Array:
  """logits [..., V] with everything but the location ids set to -inf in rows whose box is open
  (open_count [...] > 0); rows outside a box are returned unchanged."""
  start, stop = location_range
  if stop > logits.shape[-1]:
    raise ValueError(f"location_range [{start}, {stop}) does not fit in the vocabulary of {logits.shape[-1]} logits.")
  allowed = _is_location(jnp.arange(logits.shape[-1]), location_range) | (open_count[..., None] == 0)
  return jnp.where(allowed, logits, -jnp.inf)


def next_open_count(tokens: jax.Array, open_count: jax.Array, location_range: tuple[int, int]) -> jax.Array:
  """The open counts after emitting tokens: a location token adds one (a 4th closes the box: 0),
  anything else (only possible outside a box) leaves 0."""
  return jnp.where(_is_location(tokens, location_range), (open_count + 1) % BOX_SIZE, 0).astype(jnp.int32)


def decode(
  step_fn: StepFn,
  cache: Any,
  first_tokens: jax.Array,
  start_index,
  max_new_tokens: int,
  sampler: Sampler,
  rng: jax.Array,
  eos_id: int | None,
  pad_id: int,
  location_range: tuple[int, int] | None = None,
) -> jax.Array:
  """Samples up to `max_new_tokens` tokens per row. Returns int32 [N, max_new_tokens].

  Step i feeds the previous token at position start_index + i (first_tokens at start_index) and
  samples output column i. A row that emits eos_id keeps that EOS and emits pad_id afterwards;
  the loop (lax.while_loop) exits as soon as every row is done, the unused columns staying pad_id.
  eos_id=None disables stopping. Step i samples with fold_in(rng, i), so results do not depend on
  how many steps ran before an early exit.

  location_range=(start, stop): boxes of 4 location tokens are never cut (module docstring); the
  logits are masked before the sampler.
  """
  _check_lengths(max_new_tokens)
  location_range = _check_location_range(location_range, eos_id, pad_id)
  first_tokens = jnp.asarray(first_tokens, jnp.int32)
  n = first_tokens.shape[0]
  start_index = jnp.asarray(start_index, jnp.int32)

  def cond(state):
    i, _, _, done, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, tokens, cache, done, out, open_count = state
    logits, cache = step_fn(tokens, cache, start_index + i)
    if location_range is not None:
      logits = location_mask(logits, open_count, location_range)
    nxt = sampler(logits, jax.random.fold_in(rng, i))
    nxt = jnp.where(done, pad_id, nxt).astype(jnp.int32)
    if eos_id is not None:
      done = done | (nxt == eos_id)
    if location_range is not None:
      open_count = next_open_count(nxt, open_count, location_range)
    return i + 1, nxt, cache, done, out.at[:, i].set(nxt), open_count

  out = jnp.full((n, max_new_tokens), pad_id, jnp.int32)
  state = (jnp.int32(0), first_tokens, cache, jnp.zeros((n,), bool), out, jnp.zeros((n,), jnp.int32))
  return jax.lax.while_loop(cond, body, state)[-2]


def length_normalizer(length: jax.Array, alpha: float) -> jax.Array:
  """GNMT length penalty lp(len) = ((5 + len) / 6) ** alpha (Wu et al. 2016, eq. 14).

  A hypothesis is ranked by sum(log p) / lp(len). alpha = 0 ranks by raw log-probability; larger
  alpha favours longer hypotheses. lp(1) = 1, so one-token hypotheses are never rescaled.
  """
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(
  step_fn: StepFn,
  cache: Any,
  first_tokens: jax.Array,
  start_index,
  max_new_tokens: int,
  beam_size: int,
  eos_id: int | None,
  pad_id: int,
  length_penalty: float = 0.6,
  location_range: tuple[int, int] | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Beam search over log-probabilities. Returns (tokens int32 [N, max_new_tokens], scores f32 [N]).

  tokens is each row's best hypothesis (its EOS kept, pad_id after it); scores is that hypothesis'
  sum of log-probs divided by `length_normalizer(len, length_penalty)`, where len counts the
  generated tokens up to and including EOS (max_new_tokens if it never ended).

  Every cache leaf is repeated beam_size times along its leading dim (row r's beams are rows
  r*beam_size ... r*beam_size + beam_size - 1), and after each step every leaf is gathered along
  that dim so that each surviving beam carries its parent's cache.

  A finished beam keeps its score and can only be extended by pad_id at zero cost, so it competes
  with live beams for the beam_size slots until the end. Candidates are ranked by their
  length-normalised score; live candidates all have the same length, so normalisation only matters
  when comparing them to finished ones. With beam_size >= V ** (max_new_tokens - 1) nothing is ever
  pruned and the result is the exact optimum over all sequences. The loop exits early once every
  beam is finished (or dead: score -inf, which only happens when beam_size exceeds the number of
  distinct hypotheses).

  location_range=(start, stop): boxes of 4 location tokens are never cut (module docstring); each
  beam carries its open count, and the log-probabilities of an open beam's non-location tokens are
  -inf, so a live hypothesis never ends (EOS) or continues with text inside a box.
  """
  _check_lengths(max_new_tokens)
  location_range = _check_location_range(location_range, eos_id, pad_id)
  if int(beam_size) != beam_size or beam_size < 1:
    raise ValueError(f"beam_size must be an integer >= 1, got {beam_size}.")
  first_tokens = jnp.asarray(first_tokens, jnp.int32)
  n, b, t = first_tokens.shape[0], beam_size, max_new_tokens
  start_index = jnp.asarray(start_index, jnp.int32)

  cache = jax.tree_util.tree_map(lambda x: jnp.repeat(x, b, axis=0), cache)
  # All beams start identical; -inf on all but the first makes step 0 expand only one copy.
  scores = jnp.tile(jnp.concatenate([jnp.zeros((1,)), jnp.full((b - 1,), -jnp.inf)]), (n, 1))
  state = dict(
    i=jnp.int32(0),
    last=jnp.repeat(first_tokens, b),  # [N*B]
    cache=cache,
    tokens=jnp.full((n, b, t), pad_id, jnp.int32),
    scores=scores.astype(jnp.float32),  # [N, B] raw sum of log-probs
    lengths=jnp.zeros((n, b), jnp.int32),
    finished=jnp.zeros((n, b), bool),
    open_count=jnp.zeros((n, b), jnp.int32),
  )

  def cond(s):
    settled = s["finished"] | (s["scores"] == -jnp.inf)
    return (s["i"] < t) & ~jnp.all(settled)

  def body(s):
    logits, new_cache = step_fn(s["last"], s["cache"], start_index + s["i"])
    v = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(n, b, v)
    if location_range is not None:
      logp = location_mask(logp, s["open_count"], location_range)
    finished = s["finished"]
    # A finished beam's single continuation costs 0; it sits in slot 0 and is turned into
    # pad_id below, so pad_id need not be a valid vocabulary index.
    only_first = jnp.where(jnp.arange(v) == 0, 0.0, -jnp.inf)
    logp = jnp.where(finished[..., None], only_first, logp)
    cand = s["scores"][..., None] + logp  # [N, B, V]
    cand_len = s["lengths"] + (~finished)  # [N, B]
    key = cand / length_normalizer(cand_len, length_penalty)[..., None]
    _, flat = jax.lax.top_k(key.reshape(n, b * v), b)  # [N, B]
    parent, token = flat // v, (flat % v).astype(jnp.int32)

    take = lambda x: jnp.take_along_axis(x, parent, axis=1)
    parent_finished = take(finished)
    token = jnp.where(parent_finished, pad_id, token)
    new_finished = parent_finished if eos_id is None else parent_finished | (token == eos_id)
    tokens = jnp.take_along_axis(s["tokens"], parent[..., None], axis=1).at[:, :, s["i"]].set(token)
    rows = (jnp.arange(n)[:, None] * b + parent).reshape(-1)
    open_count = take(s["open_count"])
    if location_range is not None:
      open_count = next_open_count(token, open_count, location_range)
    return dict(
      i=s["i"] + 1,
      last=token.reshape(-1),
      cache=jax.tree_util.tree_map(lambda x: jnp.take(x, rows, axis=0), new_cache),
      tokens=tokens,
      scores=jnp.take_along_axis(cand.reshape(n, b * v), flat, axis=1),
      lengths=take(cand_len),
      finished=new_finished,
      open_count=open_count,
    )

  s = jax.lax.while_loop(cond, body, state)
  final = s["scores"] / length_normalizer(s["lengths"], length_penalty)
  best = jnp.argmax(final, axis=1)
  tokens = jnp.take_along_axis(s["tokens"], best[:, None, None], axis=1)[:, 0]
  return tokens, jnp.take_along_axis(final, best[:, None], axis=1)[:, 0]
