"""Drawing and captioning with a TextToImageTokens model (mmjax.models.image_tokens): its decoder's KV
cache driven by the samplers of mmjax.sample.samplers.

  images = draw(model, params, tokens, lengths, rng, image_size=32, sampler=TopK(16), guidance=3.0)
  captions = caption(model, params, images, max_new_tokens=24)   # greedy; EOS then pad

Drawing prefills the prefix [BOS, caption], then samples the N image codes one by one after BOI; the
logits are restricted to the K code ids, so whatever the sampler (greedy, temperature, top-k, top-p),
every drawn token is a code. Classifier-free guidance runs the batch twice, [caption; null condition]
(the prefix [BOS] alone), and samples from l_null + g (l_caption - l_null): the same token is fed back
to both halves. With candidates > 1 the likeliest of that many drawings is kept (mmjax.sample.rerank).
Then the tokenizer decodes the codes to pixels.

A masked model (config.model.image_decoding "masked") is drawn by `fill_codes` instead, MaskGIT's
parallel decoding: all N codes start masked; each of `steps` full forwards samples every masked code
(the same samplers, guidance on the logits) and keeps the surest, its log-probability plus Gumbel
noise at a temperature falling linearly to 0 (`choice_temperature`), until the cosine schedule's share
is left masked (none after the last step).

Captioning prefills [BOS] | [BOI, the image's codes but the last] and decodes the caption greedily
from the last code onwards (the decoder's captioning direction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.models.image_tokens import is_masked, masked_fraction
from mmjax.models.text_to_image import to_model_space, to_pixels
from mmjax.sample.guidance import guide
from mmjax.sample.rerank import best_of, model_logits
from mmjax.sample.samplers import Greedy, Sampler, decode
from mmjax.tokenizer import EOS_ID, PAD_ID


def empty_cache(model, params, tokens, cond, length: int):
  """Zeroed KV-cache variables for `length` decoder positions past the prefix (eval_shape of an
  init-mode decode call: shapes for free)."""
  b = tokens.shape[0]
  shapes = jax.eval_shape(
    lambda: model.apply(
      {"params": params}, jnp.zeros((b, length), jnp.int32), cond, 0, method="decode", mutable=["cache"]
    )[1]["cache"]
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def prefill(model, params, kv, tokens, cond):
  """Writes the prefix and `tokens` [B, T] into the cache; returns (logits [B, T, V], cache)."""
  logits, mutated = model.apply({"params": params, "cache": kv}, tokens, cond, 0, method="decode", mutable=["cache"])
  return logits, mutated["cache"]


def conditions(model, params, tokens, lengths, guidance):
  """(tokens, the decoder's Conditioning) of the rows to run: the captions, and with guidance (not None)
  also the null condition after them, [caption; null]."""
  if guidance is not None:
    tokens = jnp.concatenate([tokens, tokens])
    lengths = jnp.concatenate([lengths, jnp.zeros_like(lengths)])
  return tokens, model.apply({"params": params}, tokens, lengths, method="condition")


def draw_codes(
  model, params, tokens, lengths, rng, *, n_codes: int, sampler: Sampler, guidance=None, plausibility=0.0
) -> jax.Array:
  """Codes int32 [B, n_codes] for caption tokens [B, L] (no BOS / EOS) with lengths [B] (guided logits:
  mmjax.sample.guidance.guide at `plausibility`)."""
  first, k = model.first_image_id, model.codebook_size
  b = tokens.shape[0]
  tokens, cond = conditions(model, params, tokens, lengths, guidance)
  p = cond.prefix.shape[1]
  kv = empty_cache(model, params, tokens, cond, n_codes)
  _, kv = prefill(model, params, kv, jnp.zeros((tokens.shape[0], 0), jnp.int32), cond)

  def step_fn(code, kv, index):
    # `code` in [0, K]: a sampled code, or K for BOI (boi = first + K), so the id is first + code.
    ids = first + code
    if guidance is not None:
      ids = jnp.concatenate([ids, ids])
    logits, mutated = model.apply(
      {"params": params, "cache": kv}, ids[:, None], cond, index, method="decode", mutable=["cache"]
    )
    logits = logits[:, 0, first : first + k]
    if guidance is not None:
      logits = guide(logits[:b], logits[b:], guidance, plausibility)
    return logits, mutated["cache"]

  start = jnp.full((b,), k, jnp.int32)  # BOI = first + k
  return decode(step_fn, kv, start, p, n_codes, sampler, rng, eos_id=None, pad_id=0)


def fill_codes(
  model,
  params,
  tokens,
  lengths,
  rng,
  *,
  n_codes: int,
  sampler: Sampler,
  steps: int,
  choice_temperature: float,
  guidance=None,
  plausibility=0.0,
) -> jax.Array:
  """Codes int32 [B, n_codes] of a masked model for caption tokens [B, L] with lengths [B], in `steps`
  parallel steps (MaskGIT). After step s (1-based) floor(n_codes * masked_fraction(s / steps)) codes
  stay masked, but each step fixes at least one new code."""
  if steps < 1:
    raise ValueError(f"fill_codes: steps={steps} must be >= 1.")
  first, k = model.first_image_id, model.codebook_size
  b = tokens.shape[0]
  _, cond = conditions(model, params, tokens, lengths, guidance)

  def step(s, carry):
    codes, hidden, rng = carry  # hidden: bool [B, N], the codes not fixed yet
    rng, k_draw, k_choice = jax.random.split(rng, 3)
    ids = jnp.where(hidden, model.mask_id, first + codes)
    if guidance is not None:
      ids = jnp.concatenate([ids, ids])
    logits = model.apply({"params": params}, ids, cond, method="fill_logits")[..., first : first + k]
    logits = logits.astype(jnp.float32)
    if guidance is not None:
      logits = guide(logits[:b], logits[b:], guidance, plausibility)
    drawn = sampler(logits.reshape(b * n_codes, k), k_draw).reshape(b, n_codes)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), drawn[..., None], axis=-1)[..., 0]
    codes = jnp.where(hidden, drawn, codes)
    progress = (s + 1) / steps
    keep_hidden = jnp.floor(n_codes * masked_fraction(progress)).astype(jnp.int32)
    keep_hidden = jnp.clip(keep_hidden, 0, jnp.maximum(jnp.sum(hidden, axis=-1) - 1, 0))
    # The surest codes are fixed first; the noise lets less likely ones through early on (MaskGIT).
    noise = choice_temperature * (1.0 - progress) * jax.random.gumbel(k_choice, (b, n_codes))
    confidence = jnp.where(hidden, logp + noise, jnp.inf)
    rank = jnp.argsort(jnp.argsort(confidence, axis=-1), axis=-1)
    return codes, rank < keep_hidden[:, None], rng

  start = (jnp.zeros((b, n_codes), jnp.int32), jnp.ones((b, n_codes), bool), rng)
  codes, _, _ = jax.lax.fori_loop(0, steps, step, start)
  return codes


def draw(
  model, params, tokens, lengths, rng, *, image_size, sampler, guidance=None, plausibility=0.0, candidates=1, **masked
):
  """uint8 images [B, image_size, image_size, 3] for caption tokens [B, L] with lengths [B]: codes
  sampled by `sampler` (with classifier-free guidance at scale `guidance`, limited to the conditional
  model's plausible codes by `plausibility`: mmjax.sample.guidance; None: the conditional model), one by
  one, each image the likeliest of `candidates` drawings (mmjax.sample.rerank), or for a masked model by
  `fill_codes` (`masked`: its steps and choice_temperature; one drawing); then decoded by the model's VQ
  tokenizer. A deterministic function of rng."""
  n_codes = model.num_codes(image_size)
  kw = dict(n_codes=n_codes, sampler=sampler, guidance=guidance, plausibility=plausibility)
  if is_masked(model.config):
    if candidates != 1:
      raise ValueError(f"candidates={candidates}: a masked (MaskGIT) model has no drawing order to score; use 1.")
    codes = fill_codes(model, params, tokens, lengths, rng, **kw, **masked)
  else:
    logits_fn = model_logits(model, params)
    draw_fn = lambda t, ln, r: draw_codes(model, params, t, ln, r, **kw)
    codes = best_of(draw_fn, logits_fn, tokens, lengths, rng, candidates=candidates, guidance=guidance)
  return to_pixels(model.apply({"params": params}, codes, image_size, method="decode_image"))


def caption(model, params, images, *, max_new_tokens: int) -> jax.Array:
  """Greedy captions int32 [B, max_new_tokens] (EOS kept, pad after it) of uint8 images [B, S, S, 3]."""
  codes = model.apply({"params": params}, to_model_space(images), method="encode_image")
  b, n = codes.shape
  null = jnp.zeros((b, 0), jnp.int32)  # the null condition: the prefix [BOS] (padded to its slots)
  cond = model.apply({"params": params}, null, jnp.zeros((b,), jnp.int32), method="condition")
  p = cond.prefix.shape[1]
  ids = jnp.concatenate([jnp.full((b, 1), model.boi_id, jnp.int32), model.first_image_id + codes], axis=1)
  kv = empty_cache(model, params, null, cond, n + max_new_tokens)
  _, kv = prefill(model, params, kv, ids[:, :-1], cond)

  def step_fn(token, kv, index):
    logits, mutated = model.apply(
      {"params": params, "cache": kv}, token[:, None], cond, index, method="decode", mutable=["cache"]
    )
    return logits[:, 0], mutated["cache"]

  return decode(step_fn, kv, ids[:, -1], p + n, max_new_tokens, Greedy(), jax.random.key(0), EOS_ID, PAD_ID)
