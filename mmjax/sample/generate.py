"""Batched generation from a VisionLanguageModel: encode once, then decode with a KV cache.

The samplers in samplers.py only see a step function; this module is the glue that turns the
model into one. The conditioning (fusion output) rides inside the cache pytree so beam search
tiles and reorders it together with the keys and values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.models import vlm
from mmjax.sample.samplers import beam_search, decode, sampler_from_config


@dataclasses.dataclass(frozen=True)
class GenerateOptions:
  max_new_tokens: int
  bos_id: int
  eos_id: int
  pad_id: int
  sampler: str = "greedy"  # greedy | temperature | top_k | top_p | beam
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  beam_size: int = 4
  # Location-token ids [start, stop) (the tokenizer's `locations`): boxes of 4 location tokens are
  # never cut by text or EOS (samplers.py, "Location constraint"). None: unconstrained.
  location_range: tuple[int, int] | None = None


def options_from_config(config, tokenizer) -> GenerateOptions:
  """GenerateOptions of an experiment config (config.sampler; max_new_tokens 0 = data.max_target_len).

  location_range comes from the tokenizer: its location ids when it has location tokens
  (`tokenizer.locations`, see mmjax.tokenizer), else None."""
  s = config.sampler
  locations = tokenizer.locations
  return GenerateOptions(
    max_new_tokens=int(s.max_new_tokens or config.data.max_target_len),
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
    pad_id=tokenizer.pad_id,
    sampler=s.name,
    temperature=s.temperature,
    top_k=s.top_k,
    top_p=s.top_p,
    beam_size=s.beam_size,
    location_range=None if locations is None else (int(locations.first_id), int(locations.stop)),
  )


def generate(model, params, images, prompt, prompt_len, rng, opts: GenerateOptions, media=None) -> jax.Array:
  """Returns generated token ids int32 [B, max_new_tokens] (EOS kept, pad after it).

  media: the model's media keyword arguments ({"audio": ..., "audio_len": ...}), if it has any.
  """
  cond = model.apply({"params": params}, images, prompt, prompt_len, method="encode", **(media or {}))
  b = images.shape[0]
  # Cache variables are created by an init-mode decode call; eval_shape gets their shapes for free.
  shapes = jax.eval_shape(
    lambda: model.apply(
      {"params": params}, jnp.zeros((b, opts.max_new_tokens), jnp.int32), cond, 0, method="decode", mutable=["cache"]
    )[1]["cache"]
  )
  kv = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  # Prefix-LM families: a prefill call writes the prefix into the cache; generation then starts
  # right after it. Families without a prefix (cross-attention) skip this and start at 0.
  n_prefill = model.prefill_length(cond)
  if n_prefill:
    _, mutated = model.apply(
      {"params": params, "cache": kv}, jnp.zeros((b, 0), jnp.int32), cond, 0, method="decode", mutable=["cache"]
    )
    kv = mutated["cache"]
  cache = {"kv": kv, "cond": cond}

  def step_fn(tokens, cache, index):
    logits, mutated = model.apply(
      {"params": params, "cache": cache["kv"]},
      tokens[:, None],
      cache["cond"],
      index,
      method="decode",
      mutable=["cache"],
    )
    return logits[:, 0], {"kv": mutated["cache"], "cond": cache["cond"]}

  first = jnp.full((b,), opts.bos_id, jnp.int32)
  if opts.sampler == "beam":
    tokens, _ = beam_search(
      step_fn,
      cache,
      first,
      n_prefill,
      opts.max_new_tokens,
      opts.beam_size,
      opts.eos_id,
      opts.pad_id,
      location_range=opts.location_range,
    )
    return tokens
  sampler = sampler_from_config(opts.sampler, opts.temperature, opts.top_k or None, opts.top_p)
  return decode(
    step_fn,
    cache,
    first,
    n_prefill,
    opts.max_new_tokens,
    sampler,
    rng,
    opts.eos_id,
    opts.pad_id,
    location_range=opts.location_range,
  )


def token_logprobs(model, params, images, prompt, prompt_len, tokens, bos_id: int, media=None) -> jax.Array:
  """log p(token) float32 [B, T] of each of `tokens` int32 [B, T] (e.g. generate's output) under
  the model, teacher-forced: one forward pass with bos and the tokens before each as its input.
  The model's own distribution (no sampler, no location mask); entries after an EOS are
  meaningless and left to the caller to ignore."""
  target_in = jnp.concatenate([jnp.full_like(tokens[:, :1], bos_id), tokens[:, :-1]], axis=1)
  logits = model.apply({"params": params}, images, prompt, prompt_len, target_in, **(media or {}))
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]


def make_generate_fn(setup, opts: GenerateOptions):
  """jit-compiled generate under the training mesh: batch on data x fsdp, params as in training.

  Returns run(params, images, prompt, prompt_len, rng, **media) -> tokens; `run.media_keys` names
  the media keyword arguments the model needs (e.g. audio, audio_len), all batched like the images;
  `run.token_logprobs(params, images, prompt, prompt_len, tokens, **media)` gives `token_logprobs`
  of given tokens (e.g. run's output) the same way (confidences of generated boxes).
  """
  params_sharding = setup.state_sharding.params
  image_s = sharding.batch_sharding(setup.mesh, 4)
  vec_s = sharding.batch_sharding(setup.mesh, 1)
  mat_s = sharding.batch_sharding(setup.mesh, 2)
  ranks = {k: r for m in vlm.media_modalities(setup.config.model) for k, r in vlm.MEDIA_INPUTS[m].items()}
  media_s = {k: sharding.batch_sharding(setup.mesh, r) for k, r in ranks.items()}
  inputs_s = (params_sharding, image_s, mat_s, vec_s, media_s)
  gen = jax.jit(
    lambda p, im, pr, pl, media, r: generate(setup.model, p, im, pr, pl, r, opts, media),
    in_shardings=(*inputs_s, NamedSharding(setup.mesh, P())),
    out_shardings=mat_s,
  )
  score = jax.jit(
    lambda p, im, pr, pl, media, t: token_logprobs(setup.model, p, im, pr, pl, t, opts.bos_id, media),
    in_shardings=(*inputs_s, mat_s),
    out_shardings=mat_s,
  )

  # Rows per process must split evenly over this process's share of the data x fsdp devices.
  multiple = max(1, setup.mesh.shape["data"] * setup.mesh.shape["fsdp"] // jax.process_count())

  row_s = {"images": image_s, "prompt": mat_s, "prompt_len": vec_s, "tokens": mat_s}  # "tokens": score's
  put_s = row_s | media_s

  def call(fn, params, rows: dict, rng=None):
    """fn on this process's rows (numpy): images, prompt, prompt_len, the media, and for `score` the
    tokens. Padded (with copies of the last row) to a multiple of the batch-sharding size; returns
    all processes' rows (numpy), in order, the padding dropped."""
    media = sorted(set(rows) - set(row_s))
    if media != sorted(media_s):
      raise ValueError(
        f"generate: the model reads the media {sorted(media_s)} (config.model.audio / video); got {media}."
      )
    n = len(rows["prompt_len"])
    pad = (-n) % multiple
    rows = {k: np.asarray(x) for k, x in rows.items()}
    if pad:
      rows = {k: np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for k, x in rows.items()}
    put = lambda k: jax.make_array_from_process_local_data(put_s[k], rows[k])
    with setup.context():
      out = fn(
        params,
        put("images"),
        put("prompt"),
        put("prompt_len"),
        {k: put(k) for k in media_s},
        put("tokens") if "tokens" in rows else rng,
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      out = np.asarray(multihost_utils.process_allgather(out, tiled=True))
      per = n + pad
      return np.concatenate([out[i * per : i * per + n] for i in range(jax.process_count())])
    return np.asarray(out)[:n]

  def run(params, images, prompt, prompt_len, rng, **media):
    """Takes this process's rows (numpy); returns all processes' rows (numpy), in order. Any number
    of rows works; in a multi-process run every process must pass the same number of rows."""
    return call(gen, params, dict(media, images=images, prompt=prompt, prompt_len=prompt_len), rng)

  def run_token_logprobs(params, images, prompt, prompt_len, tokens, **media):
    return call(score, params, dict(media, images=images, prompt=prompt, prompt_len=prompt_len, tokens=tokens))

  run.media_keys = tuple(media_s)
  run.token_logprobs = run_token_logprobs
  return run
