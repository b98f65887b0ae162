"""ViViT video encoder (Arnab et al. 2021, tubelet embedding): video -> tokens [B, N, D].

Videos arrive as uint8 [B, T, H, W, 3] (or float in [0, 1]) and are scaled to [-1, 1]. Non-
overlapping (tubelet_t, patch, patch) tubelets are flattened (einops) and linearly embedded, which
is a Conv3D with stride = kernel; then learned or factorised sin-cos positions (2-D over space plus
1-D over time), pre-norm transformer blocks over all space-time tokens, a final norm.

Tokens are time-major (all patches of tubelet 0, then of tubelet 1, ...), so the first
`video_len` frames of a clip are the first `num_valid_tokens(...)` tokens; given `lengths`, the
blocks attend only to those (a padded clip reads like the same clip without its padding frames,
up to the zero frames that share a tubelet with its last real frame).
"""

from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.encoders.audio import sincos_1d


def num_valid_tokens(video_len, video_shape, patch_size: int, tubelet_t: int):
  """Tokens of the first `video_len` frames of videos [B, T, H, W, 3]: every tubelet that holds a
  real frame (a partly filled last tubelet counts) times the patches per frame."""
  h, w = video_shape[2:4]
  return (-(-video_len // tubelet_t)) * (h // patch_size) * (w // patch_size)


class VideoEncoder(nn.Module):
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  patch_size: int = 8
  tubelet_t: int = 2
  posemb: str = "sincos"  # "learn" | "sincos"
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, video, lengths=None):
    """video [B, T, H, W, 3] (+ valid frames per clip [B]) -> tokens [B, N, width]."""
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"VideoEncoder expects videos [B, T, H, W, 3]; got {video.shape}.")
    t, h, w = video.shape[1:4]
    p, pt = self.patch_size, self.tubelet_t
    if t % pt or h % p or w % p:
      raise ValueError(f"VideoEncoder: video {t}x{h}x{w} is not a multiple of tubelets {pt}x{p}x{p}.")
    x = video.astype(jnp.float32)
    if video.dtype == jnp.uint8:
      x = x / 255.0
    x = x * 2.0 - 1.0
    tubes = einops.rearrange(x, "b (gt u) (gh p) (gw q) c -> b (gt gh gw) (u p q c)", u=pt, p=p, q=p)
    x = layers.Dense(self.width, ("patch",), ("embed",), dtype=self.dtype, name="tubelet_embed")(tubes)
    gt, gh, gw = t // pt, h // p, w // p
    if self.posemb == "learn":
      pos = self.param(
        "posemb",
        layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
        (gt * gh * gw, self.width),
        jnp.float32,
      )
    elif self.posemb == "sincos":
      space = layers.sincos_2d(gh, gw, self.width)  # [gh*gw, D]
      time = sincos_1d(gt, self.width)  # [gt, D]
      pos = jnp.asarray((time[:, None, :] + space[None, :, :]).reshape(gt * gh * gw, self.width))
    else:
      raise ValueError(f"VideoEncoder: unknown posemb {self.posemb!r}; use 'learn' or 'sincos'.")
    x = layers.constrain_tokens(x + pos.astype(x.dtype)[None])
    mask = (
      None
      if lengths is None
      else MaskSpec(kv_valid_len=num_valid_tokens(lengths, video.shape, p, pt).astype(jnp.int32))
    )
    for i in range(self.depth):
      x = layers.TransformerBlock(
        self.num_heads,
        self.width // self.num_heads,
        self.mlp_dim,
        implementation=self.implementation,
        dtype=self.dtype,
        name=f"block_{i}",
      )(x, self_mask=mask)
    return layers.Norm(self.dtype, name="norm")(x)
