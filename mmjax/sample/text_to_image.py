"""Image generation from caption tokens under the training mesh: what the text-to-image evaluation
(mmjax.evaluate.text_to_image), experiments/sample.py --prompt and the notebooks share.

  run = make_generate_fn(setup)                        # options from config.sampler
  images = run(params, tokens, lengths, rng, guidance)  # uint8 [B, S, S, 3]; guidance None = conditional

The model kind says how it draws (its `image_sampler` hook): "flow" integrates the velocity ODE of a
flow-matching model from noise (mmjax.sample.flow).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.models.text_to_image import to_pixels
from mmjax.sample import flow


def generate(
  model,
  params,
  tokens,
  lengths,
  rng,
  *,
  image_size: int,
  steps: int,
  method: str = "heun",
  guidance: float | None = None,
  channels: int = 3,
) -> jax.Array:
  """uint8 images [B, image_size, image_size, channels] of a TextToImageFlow `model` for caption tokens
  [B, L] (no BOS / EOS) with `lengths` [B].

  guidance None: the conditional sampler (B rows per velocity evaluation). A number: classifier-free
  guidance on the doubled batch [conditional; null condition] (scale 1 gives the conditional sampler's
  images up to float rounding, at twice the cost). A deterministic function of rng (the starting
  noise). steps, method and guidance are static under jit."""
  text = model.apply({"params": params}, tokens, lengths, method="encode_text")
  shape = (tokens.shape[0], image_size, image_size, channels)

  def vel(x, t, txt, ln):
    return model.apply({"params": params}, x, t, txt, ln, method="velocity")

  if guidance is None:
    v = lambda x, t: vel(x, t, text, lengths)
  else:
    text2, len2 = jnp.concatenate([text, text]), jnp.concatenate([lengths, jnp.zeros_like(lengths)])
    v = lambda x2, t2: vel(x2, t2, text2, len2)
  return to_pixels(flow.sample(v, rng, shape, steps=steps, method=method, guidance_scale=guidance))


def sampler_options(config, **overrides) -> dict:
  """The sampling options of config.sampler (with `overrides`, e.g. from command-line flags), checked:
  errors name the key. Flow models: steps, method, guidance."""
  s = dict(config.sampler.to_dict(), **{k: v for k, v in overrides.items() if v is not None})
  steps, method, guidance = int(s["steps"]), str(s["method"]), float(s["guidance"])
  if steps < 1:
    raise ValueError(f"config.sampler.steps={steps} must be >= 1.")
  if method not in flow.METHODS:
    raise ValueError(f"config.sampler.method={method!r}: use one of {flow.METHODS}.")
  return dict(steps=steps, method=method, guidance=guidance)


def make_generate_fn(setup, options: dict | None = None):
  """run(params, tokens, lengths, rng, guidance=None) -> numpy uint8 images [B, S, S, 3] of all
  processes' rows, S = config.data.image_size, jit-compiled under the training mesh (batch on data x
  fsdp, params as in training), one compilation per guidance value (None: the conditional sampler).
  `options`: sampler_options (default: config.sampler's); its guidance is not used here, the caller
  passes the one it wants. Every process passes its share of a global batch whose size is a multiple
  of `run.multiple`."""
  model, config = setup.model, setup.config
  opts = dict(options or sampler_options(config))
  opts.pop("guidance", None)
  image_size = int(config.data.image_size)
  image_s, mat_s, vec_s = (sharding.batch_sharding(setup.mesh, r) for r in (4, 2, 1))
  replicated = NamedSharding(setup.mesh, P())
  compiled = {}

  def fn(guidance):
    if guidance not in compiled:
      compiled[guidance] = jax.jit(
        lambda p, tok, ln, rng: generate(model, p, tok, ln, rng, image_size=image_size, guidance=guidance, **opts),
        in_shardings=(setup.state_sharding.params, mat_s, vec_s, replicated),
        out_shardings=image_s,
      )
    return compiled[guidance]

  def run(params, tokens, lengths, rng, guidance=None):
    put = lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x))
    with setup.context():
      out = fn(guidance)(params, put(tokens, mat_s), put(lengths, vec_s), jax.device_put(rng, replicated))
    if jax.process_count() == 1:
      return np.asarray(out)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))

  run.multiple = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  return run
