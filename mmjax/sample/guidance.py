"""Classifier-free guidance of a token's logits, for the kinds that draw image indices one softmax at a
time (palette colours, image codes; mmjax.sample.pixel_tokens, mmjax.sample.image_tokens) and for the
score of their drawings (mmjax.sample.rerank).

  logits = guide(l_caption, l_null, scale=1.2, plausibility=0.1)

The guided logits are l_null + scale (l_caption - l_null): the caption's effect on every index,
amplified. With plausibility a > 0, an index whose probability under the conditional model is below a
times that of the conditional model's likeliest index is excluded (-inf): the adaptive plausibility
constraint of contrastive decoding (Li et al., 2023), which contrasts two models the same way.

Why the constraint: guidance scales the difference of two models at every index, also where both are
nearly sure of one index. There the difference of the unlikely indices' logits is noise, and at a scale
of 2 or more it lifts them into reach of the sampler: a drawing gets specks of colour where the
caption says nothing (docs/results.md, "Text-to-image"). Limited to what the conditional model finds
plausible, the scale still decides between the indices that are in doubt (which colour, where a
shape ends) without drawing what neither model would.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def guide(cond: jax.Array, null: jax.Array, scale, plausibility: float = 0.0) -> jax.Array:
  """float32 guided logits [..., K] from the conditional and null-condition logits [..., K] (module
  docstring); plausibility 0 keeps every index."""
  if not 0.0 <= plausibility < 1.0:
    raise ValueError(f"guide: plausibility={plausibility} must be in [0, 1).")
  cond, null = cond.astype(jnp.float32), null.astype(jnp.float32)
  logits = null + scale * (cond - null)
  if plausibility > 0.0:
    # p(i) >= a max p  <=>  l(i) >= max l + log a (the normaliser cancels).
    floor = jnp.max(cond, axis=-1, keepdims=True) + jnp.log(plausibility)
    logits = jnp.where(cond >= floor, logits, -jnp.inf)
  return logits
