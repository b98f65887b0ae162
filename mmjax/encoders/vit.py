"""Vision Transformer image encoder: patches -> tokens [B, N, D]."""
from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers


class ViT(nn.Module):
  """Patch embedding, learned or sin-cos positions, pre-norm blocks, final norm.

  Images arrive as uint8 [B, H, W, 3] (or float in [0, 1]); they are scaled to [-1, 1] here so the
  data pipeline can ship compact uint8 batches.
  """
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  patch_size: int = 8
  posemb: str = "learn"  # "learn" | "sincos2d"
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ViT expects images [B, H, W, 3]; got {images.shape}.")
    h, w = images.shape[1:3]
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"ViT: image size {h}x{w} is not a multiple of patch_size={p}.")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 255.0
    x = x * 2.0 - 1.0
    patches = einops.rearrange(x, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=p, q=p)
    x = layers.Dense(self.width, ("patch",), ("embed",), dtype=self.dtype, name="patch_embed")(patches)
    n = x.shape[1]
    if self.posemb == "learn":
      pos = self.param("posemb", layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
                       (n, self.width), jnp.float32)
    elif self.posemb == "sincos2d":
      pos = jnp.asarray(layers.sincos_2d(h // p, w // p, self.width))
    else:
      raise ValueError(f"ViT: unknown posemb {self.posemb!r}; use 'learn' or 'sincos2d'.")
    x = layers.constrain_tokens(x + pos.astype(x.dtype)[None])
    for i in range(self.depth):
      x = layers.TransformerBlock(self.num_heads, self.width // self.num_heads, self.mlp_dim,
                                  implementation=self.implementation, dtype=self.dtype, name=f"block_{i}")(x)
    return layers.LayerNorm(self.dtype, name="norm")(x)
