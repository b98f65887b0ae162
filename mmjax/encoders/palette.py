"""A colour-palette image tokenizer: every pixel becomes the index of its nearest palette colour (iGPT's
colour clusters, Chen et al. 2020), and the indices are grouped by square patches, so that a model can
generate an image patch by patch and, within a patch, pixel by pixel.

    digits, losses = tok.apply(v, images)                       # [B, H, W, 3] -> int32 [B, N, p*p]
    images = tok.apply(v, digits, (h, w), method=tok.decode)    # -> float32 [B, H, W, 3]

Images are in model space: float32 in [-1, 1]. N = (H / p) * (W / p) patches in row-major order; a
patch's p*p pixels are in row-major order inside it ("digits": each is one of K = levels^3 colours).

Why pixels rather than a VQ code per patch (mmjax.encoders.vq): a code stands for a whole patch, and
a codebook learnt from the training images holds only the patches they contain. A patch of a colour
and shape never seen together has no code, so neither the tokenizer nor a decoder with one softmax
over codes can produce it (measured on the shapes scenes' held-out colour-shape pairs:
docs/results.md, "Text-to-image"). A pixel's colour and its place in a shape are separate choices,
so the tokens of a model drawing pixels can put any colour into any shape.

The palette, [K, 3], starts as a uniform grid of `levels` values per channel over [-1, 1] and is
trained by the nearest-entry rule (k-means in gradient form): each pixel pulls the entry it chose,
`palette` loss = mean over pixels of |sg(x) - e|^2. Entries no pixel picks stay where the grid put
them; with a few flat colours they are simply unused, and `codebook_usage` reports how many are.
The tokenizer has no encoder or decoder network: a pixel is its colour.
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import layers
from mmjax.encoders.vq import grid_shape


def grid_palette(levels: int) -> np.ndarray:
  """[levels^3, 3] float32: every combination of `levels` evenly spaced values in [-1, 1] per
  channel (the first channel slowest); levels 1 gives the single colour 0."""
  if levels < 1:
    raise ValueError(f"palette levels={levels} must be >= 1.")
  values = np.linspace(-1.0, 1.0, levels) if levels > 1 else np.zeros(1)
  return np.stack(np.meshgrid(values, values, values, indexing="ij"), axis=-1).reshape(-1, 3).astype(np.float32)


def nearest(x: jax.Array, palette: jax.Array) -> jax.Array:
  """int32 [...] index of the palette entry nearest (Euclidean) to each colour x [..., 3] (the first
  on ties)."""
  x = x.astype(jnp.float32)
  d = jnp.sum(jnp.square(x[..., None, :] - palette.astype(jnp.float32)), axis=-1)
  return jnp.argmin(d, axis=-1).astype(jnp.int32)


class PaletteTokenizer(nn.Module):
  """Images <-> per-patch groups of palette indices. Fields: levels (K = levels^3 colours),
  patch_size (p: a patch's p*p pixels are one generated position)."""

  levels: int = 4
  patch_size: int = 4

  def setup(self):
    init = grid_palette(self.levels)
    self.palette = self.param(
      "palette", layers.param_with_axes(lambda *_: jnp.asarray(init), ("palette", "channels")), init.shape, jnp.float32
    )

  def encode(self, x: jax.Array) -> jax.Array:
    """Model-space images [B, H, W, 3] -> digits int32 [B, N, p*p]."""
    return self(x)[0]

  def decode(self, digits: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Digits int [B, N, p*p] with N = h * w (`grid` = (h, w)) -> model-space images [B, h*p, w*p, 3]."""
    p, (h, w) = self.patch_size, grid
    colours = jnp.take(self.palette, digits.astype(jnp.int32), axis=0)
    return einops.rearrange(colours, "b (h w) (p q) c -> b (h p) (w q) c", h=h, w=w, p=p, q=p)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(digits [B, N, p*p], losses per example [B]): "palette" = mean over pixels of |sg(x) - e|^2
    over the 3 channels (the only gradient the palette gets; its value is also the reconstruction
    error of the tokenizer's round trip, whose PSNR it gives)."""
    grid_shape(tuple(x.shape[1:3]), self.patch_size)  # the error for sizes the patch does not divide
    x = x.astype(jnp.float32)
    idx = nearest(x, jax.lax.stop_gradient(self.palette))
    e = jnp.take(self.palette, idx, axis=0)
    loss = jnp.mean(jnp.sum(jnp.square(jax.lax.stop_gradient(x) - e), axis=-1), axis=(1, 2))
    p = self.patch_size
    digits = einops.rearrange(idx, "b (h p) (w q) -> b (h w) (p q)", p=p, q=p)
    return digits, {"palette": loss}
