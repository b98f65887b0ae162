"""Image generation from caption tokens under the training mesh: what the text-to-image evaluation
(mmjax.evaluate.text_to_image), experiments/sample.py --prompt and the notebooks share.

  run = make_generate_fn(setup)                        # options from config.sampler
  images = run(params, tokens, lengths, rng, guidance)  # uint8 [B, S, S, 3]; guidance None = conditional

The model kind says how it draws (its `image_sampler` hook): "flow" integrates the velocity ODE of a
flow-matching model from noise (mmjax.sample.flow); "tokens" samples a decoder's image codes and
decodes them (mmjax.sample.image_tokens); "pixels" draws palette colours patch by patch
(mmjax.sample.pixel_tokens).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.models import model_class
from mmjax.models.image_tokens import is_masked
from mmjax.models.text_to_image import to_pixels
from mmjax.sample import flow, image_tokens, pixel_tokens
from mmjax.sample.samplers import sampler_from_config

IMAGE_SAMPLERS = ("flow", "tokens", "pixels")


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
) -> jax.Array:
  """uint8 images [B, image_size, image_size, 3] of a TextToImageFlow `model` for caption tokens
  [B, L] (no BOS / EOS) with `lengths` [B]: the ODE runs in pixel space, or in the latent space of the
  model's autoencoder, whose decoder then makes the images.

  guidance None: the conditional sampler (B rows per velocity evaluation). A number: classifier-free
  guidance on the doubled batch [conditional; null condition] (scale 1 gives the conditional sampler's
  images up to float rounding, at twice the cost). A deterministic function of rng (the starting
  noise). steps, method and guidance are static under jit."""
  text = model.apply({"params": params}, tokens, lengths, method="encode_text")
  shape = (tokens.shape[0], *model.sample_shape(image_size))

  def vel(x, t, txt, ln):
    return model.apply({"params": params}, x, t, txt, ln, method="velocity")

  if guidance is None:
    v = lambda x, t: vel(x, t, text, lengths)
  else:
    text2, len2 = jnp.concatenate([text, text]), jnp.concatenate([lengths, jnp.zeros_like(lengths)])
    v = lambda x2, t2: vel(x2, t2, text2, len2)
  x = flow.sample(v, rng, shape, steps=steps, method=method, guidance_scale=guidance)
  return to_pixels(model.apply({"params": params}, x, method="to_image"))


def sampler_options(config, **overrides) -> dict:
  """The sampling options of config.sampler for the config's model kind (with `overrides`, e.g. from
  command-line flags), checked: errors name the key. Flow kinds ("flow"): steps, method (euler |
  heun), guidance. Token kinds ("tokens", "pixels"): name (greedy | temperature | top_k | top_p),
  temperature, top_k, top_p, guidance, plausibility (guidance limited to the conditional model's
  plausible indices: mmjax.sample.guidance), candidates (each image the likeliest of that many drawings:
  mmjax.sample.rerank; 1 for a masked model), and for a masked model (MaskGIT) steps and
  choice_temperature."""
  s = dict(config.sampler.to_dict(), **{k: v for k, v in overrides.items() if v is not None})
  guidance = float(s["guidance"])
  steps = int(s["steps"])
  if steps < 1:
    raise ValueError(f"config.sampler.steps={steps} must be >= 1.")
  if image_sampler(config) in ("tokens", "pixels"):
    sampler_from_config(str(s["name"]), float(s["temperature"]), int(s["top_k"]) or None, float(s["top_p"]))
    keys = ("name", "temperature", "top_k", "top_p")
    if is_masked(config.model):
      if not float(s["choice_temperature"]) >= 0:
        raise ValueError(f"config.sampler.choice_temperature={s['choice_temperature']} must be >= 0.")
      keys += ("steps", "choice_temperature")
    candidates = int(s["candidates"])
    if candidates < 1:
      raise ValueError(f"config.sampler.candidates={candidates}: must be >= 1.")
    if candidates > 1 and is_masked(config.model):
      raise ValueError(
        f"config.sampler.candidates={candidates}: a masked (MaskGIT) model has no drawing order to score; use 1."
      )
    plausibility = float(s["plausibility"])
    if not 0.0 <= plausibility < 1.0:
      raise ValueError(f"config.sampler.plausibility={s['plausibility']} must be in [0, 1).")
    return dict({k: s[k] for k in keys}, guidance=guidance, plausibility=plausibility, candidates=candidates)
  if float(s["plausibility"]) != 0.0:
    raise ValueError(
      f"config.sampler.plausibility={s['plausibility']}: a flow-matching model draws no indices to limit; use 0."
    )
  if int(s["candidates"]) != 1:
    raise ValueError(
      f"config.sampler.candidates={s['candidates']}: a flow-matching model has no exact likelihood of a drawing "
      "to rank candidates by; use 1."
    )
  method = str(s["method"])
  if method not in flow.METHODS:
    raise ValueError(f"config.sampler.method={method!r}: use one of {flow.METHODS}.")
  return dict(steps=steps, method=method, guidance=guidance)


def image_sampler(config) -> str:
  """How the config's model kind draws: its `image_sampler` hook ("flow" | "tokens")."""
  kind = model_class(config.model)
  how = getattr(kind, "image_sampler", None)
  if how not in IMAGE_SAMPLERS:
    raise ValueError(
      f"config.model.kind={config.model.kind!r} does not generate images (its image_sampler is {how!r}; "
      f"a text-to-image kind sets one of {IMAGE_SAMPLERS})."
    )
  return how


def _draw_fn(setup, opts: dict):
  """(params, tokens, lengths, rng, guidance) -> uint8 images, for the setup's model kind."""
  model, image_size = setup.model, int(setup.config.data.image_size)
  how = image_sampler(setup.config)
  if how in ("tokens", "pixels"):
    sampler = sampler_from_config(
      opts["name"], float(opts["temperature"]), int(opts["top_k"]) or None, float(opts["top_p"])
    )
    kw = dict(
      image_size=image_size,
      sampler=sampler,
      plausibility=float(opts.get("plausibility", 0.0)),
      candidates=int(opts.get("candidates", 1)),
    )
    if how == "pixels":
      return lambda p, tok, ln, rng, guidance: pixel_tokens.draw(model, p, tok, ln, rng, guidance=guidance, **kw)
    if "steps" in opts:  # masked
      kw |= dict(steps=int(opts["steps"]), choice_temperature=float(opts["choice_temperature"]))
    return lambda p, tok, ln, rng, guidance: image_tokens.draw(model, p, tok, ln, rng, guidance=guidance, **kw)
  return lambda p, tok, ln, rng, guidance: generate(
    model, p, tok, ln, rng, image_size=image_size, steps=opts["steps"], method=opts["method"], guidance=guidance
  )


def make_generate_fn(setup, options: dict | None = None):
  """run(params, tokens, lengths, rng, guidance=None) -> numpy uint8 images [B, S, S, 3] of all
  processes' rows, S = config.data.image_size, jit-compiled under the training mesh (batch on data x
  fsdp, params as in training), one compilation per guidance value (None: the conditional sampler).
  `options`: sampler_options (default: config.sampler's); its guidance is not used here, the caller
  passes the one it wants. Every process passes its share of a global batch whose size is a multiple
  of `run.multiple`."""
  draw = _draw_fn(setup, dict(options or sampler_options(setup.config)))
  image_s, mat_s, vec_s = (sharding.batch_sharding(setup.mesh, r) for r in (4, 2, 1))
  replicated = NamedSharding(setup.mesh, P())
  compiled = {}

  def fn(guidance):
    if guidance not in compiled:
      compiled[guidance] = jax.jit(
        lambda p, tok, ln, rng: draw(p, tok, ln, rng, guidance),
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


def encode_prompts(tokenizer, prompts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Caption tokens of prompts to draw, as the model reads its training captions: (tokens int32 [N, max_len]
  without BOS / EOS, padded with the tokenizer's pad id; lengths int32 [N]).

  Runs of whitespace become one space (the training captions are single-spaced). ValueError, naming the
  prompt, for an empty one, one longer than `max_len` tokens (what the text encoder takes: e.g.
  config.model.text.max_len), and one with words the tokenizer cannot encode: mmjax's own SentencePiece
  tokenizer has byte fallback, but an imported one may map a word to its unk_id, and the model would then
  draw from an <unk> it never learned. `tokenizer` needs encode(text) -> ids and unk_id (None: none)."""
  if not prompts:
    raise ValueError("no prompts: give at least one caption of the image to draw.")
  unk = getattr(tokenizer, "unk_id", None)
  tokens = np.full((len(prompts), max_len), getattr(tokenizer, "pad_id", 0), np.int32)
  lengths = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    text = " ".join(str(p).split())
    if not text:
      raise ValueError(f"prompt {i} is empty: describe the image to draw.")
    ids = [int(t) for t in tokenizer.encode(text)]
    if unk is not None and unk in ids:
      # Word by word, to name what is unknown (a word alone encodes as it does inside the text).
      words = [w for w in dict.fromkeys(text.split()) if unk in tokenizer.encode(w)]
      what = f"no pieces for {', '.join(map(repr, words))}" if words else f"{ids.count(unk)} unknown piece(s) in it"
      raise ValueError(
        f"prompt {p!r}: the tokenizer has {what} (encoded as its unknown token, id {unk}), which the model "
        "never learned to draw; rephrase with words of its vocabulary."
      )
    if len(ids) > max_len:
      raise ValueError(f"prompt {p!r} is {len(ids)} tokens; this model's text encoder reads at most {max_len}.")
    tokens[i, : len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths


def image_grid(images: np.ndarray, scale: int = 1, gap: int = 2, background: int = 255) -> np.ndarray:
  """One uint8 image [R * H * scale + (R - 1) * gap, C * W * scale + (C - 1) * gap, 3] of images
  [R, C, H, W, 3]: row r, column c at (r * (H * scale + gap), c * (W * scale + gap)), each pixel repeated
  scale x scale times (nearest neighbour, so that 32x32 samples stay crisp when shown large), the `gap`
  pixels between cells (none around the border) filled with `background`."""
  images = np.asarray(images)
  if images.ndim != 5 or images.dtype != np.uint8 or 0 in images.shape[:2]:
    raise ValueError(f"image_grid takes uint8 images [rows, columns, H, W, C]; got {images.dtype} {images.shape}.")
  if int(scale) < 1 or int(gap) < 0:
    raise ValueError(f"image_grid: scale={scale} must be >= 1 and gap={gap} >= 0.")
  scale, gap = int(scale), int(gap)
  rows, cols, h, w, ch = images.shape
  big = images.repeat(scale, axis=2).repeat(scale, axis=3)
  hs, ws = h * scale, w * scale
  out = np.full((rows * hs + (rows - 1) * gap, cols * ws + (cols - 1) * gap, ch), background, np.uint8)
  for r in range(rows):
    for c in range(cols):
      y, x = r * (hs + gap), c * (ws + gap)
      out[y : y + hs, x : x + ws] = big[r, c]
  return out
