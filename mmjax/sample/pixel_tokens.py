"""Drawing with a TextToImagePixels model (mmjax.models.pixel_tokens): its decoder's KV cache, one
position per patch, and its pixel head inside each patch.

  images = draw(model, params, tokens, lengths, rng, image_size=32, sampler=TopK(2), guidance=1.5)

Drawing prefills the prefix [BOS, caption]; then for each of the N patches in raster order the decoder
reads the previous patch (BOI for the first) and the head draws the patch's p*p pixels one by one, each
from its palette logits given the pixels before it, with the samplers of mmjax.sample.samplers.
Classifier-free guidance runs the batch twice, [caption; null condition] (the prefix [BOS] alone): every
pixel is drawn from l_null + g (l_caption - l_null) (among the colours the conditional model finds
plausible: mmjax.sample.guidance), and the same colour is fed back to both halves. The palette then
turns the colours into pixels. Pixel j of patch n is drawn with fold_in(fold_in(rng, n), j), so a seed
gives the same images however the batch is sharded. `draw` can keep the likeliest of several drawings of
each caption (mmjax.sample.rerank).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mmjax.models.text_to_image import to_pixels
from mmjax.sample.guidance import guide
from mmjax.sample.image_tokens import conditions, empty_cache, prefill
from mmjax.sample.rerank import best_of, model_logits
from mmjax.sample.samplers import Sampler


def draw_colours(
  model, params, tokens, lengths, rng, *, n_patches: int, sampler: Sampler, guidance=None, plausibility=0.0
):
  """Palette indices int32 [B, n_patches, P] for caption tokens [B, L] (no BOS / EOS) with lengths [B]
  (guided logits: mmjax.sample.guidance.guide at `plausibility`)."""
  b, pixels = tokens.shape[0], model.pixels_per_patch
  tokens, cond = conditions(model, params, tokens, lengths, guidance)
  rows = tokens.shape[0]
  start = cond.prefix.shape[1]
  kv = empty_cache(model, params, tokens, cond, n_patches)
  _, kv = prefill(model, params, kv, jnp.zeros((rows, 0), jnp.int32), cond)
  apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
  both = (lambda c: jnp.concatenate([c, c])) if guidance is not None else (lambda c: c)

  def patch(n, carry):
    x, kv, out = carry
    hidden, mutated = model.apply(
      {"params": params, "cache": kv}, x, cond, start + n, n_patches, method="decode", mutable=["cache"]
    )
    state = apply("pixel_state", hidden[:, 0])
    key = jax.random.fold_in(rng, n)

    def pixel(j, inner):
      context, colours = inner
      logits = apply("pixel_logits", state, context, j)
      if guidance is not None:
        logits = guide(logits[:b], logits[b:], guidance, plausibility)
      c = sampler(logits, jax.random.fold_in(key, j)).astype(jnp.int32)
      return context + apply("pixel_input", j, both(c)), colours.at[:, j].set(c)

    init = (jnp.zeros_like(state), jnp.zeros((b, pixels), jnp.int32))
    _, colours = jax.lax.fori_loop(0, pixels, pixel, init)
    x = apply("patch_inputs", both(colours)[:, None]) + apply("grid_position", n + 1, n_patches)
    x = x.astype(jnp.float32)
    return x, mutated["cache"], out.at[:, n].set(colours)

  x0 = (apply("boi_inputs", rows) + apply("grid_position", 0, n_patches)).astype(jnp.float32)
  init = (x0, kv, jnp.zeros((b, n_patches, pixels), jnp.int32))
  return jax.lax.fori_loop(0, n_patches, patch, init)[2]


def draw(model, params, tokens, lengths, rng, *, image_size, sampler, guidance=None, plausibility=0.0, candidates=1):
  """uint8 images [B, image_size, image_size, 3] for caption tokens [B, L] with lengths [B] (with
  classifier-free guidance at scale `guidance`, limited to the conditional model's plausible colours
  by `plausibility`: mmjax.sample.guidance; None: the conditional model), each the likeliest of
  `candidates` drawings (mmjax.sample.rerank). A deterministic function of rng."""
  n = model.num_patches(image_size)
  logits_fn = model_logits(model, params)
  kw = dict(n_patches=n, sampler=sampler, guidance=guidance, plausibility=plausibility)
  draw_fn = lambda t, ln, r: draw_colours(model, params, t, ln, r, **kw)
  colours = best_of(draw_fn, logits_fn, tokens, lengths, rng, candidates=candidates, guidance=guidance)
  return to_pixels(model.apply({"params": params}, colours, image_size, method="decode_image"))
