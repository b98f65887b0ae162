"""An image autoencoder with continuous latents, for generative models that work in a latent space
(latent flow matching: Stable Diffusion, SD3, Flux).

    z = ae.apply(v, images, method=ae.encode)          # [B, H, W, 3] -> [B, H/p, W/p, latent_dim]
    images = ae.apply(v, z, method=ae.decode)          # -> float32 [B, H, W, 3] in [-1, 1]
    recon, z, losses = ae.apply(v, images)             # training: losses["recon_mse"] per example

The convolutional encoder and decoder are the VQ tokenizer's (mmjax.encoders.vq), without the
codebook. Images are in model space ([-1, 1]).

Why the latents are l2-normalised and scaled by sqrt(latent_dim): a flow or diffusion model noises
its data with N(0, I), so the latents' scale must match the noise's: Stable Diffusion multiplies its
VAE's latents by a constant measured once (0.18215), which goes stale when the autoencoder trains
alongside the generator. A latent vector on the sphere of radius sqrt(latent_dim) has every
coordinate at root-mean-square 1, whatever the autoencoder has learnt, so the scale holds from the
first step to the last, and the encoder cannot collapse its latents towards 0 (or blow them up) to
make either model's loss smaller. The sphere costs one dimension per position of the code's capacity,
which the reconstruction loss makes up for with the others. No KL term is needed to bound the scale.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.encoders.vq import Decoder, Encoder, grid_shape, l2_normalize


class ImageAutoencoder(nn.Module):
  """Images [B, H, W, 3] in [-1, 1] <-> latents [B, H/p, W/p, latent_dim] (module docstring)."""

  latent_dim: int = 8
  patch_size: int = 4  # image side / patch_size = latent grid side
  width: int = 64  # conv channels
  depth: int = 2  # residual conv blocks on each side
  refine: int = 0  # residual blocks at full resolution after the upsampling (mmjax.encoders.vq.Decoder)
  # The data's mean colour in model space: the networks see and predict x - pixel_mean (as in vq.py).
  pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.latent_dim, self.patch_size, self.width, self.depth, self.dtype)
    self.decoder = Decoder(self.patch_size, self.width, self.depth, self.refine, self.dtype)

  def _mean(self):
    return jnp.asarray(self.pixel_mean, jnp.float32)

  def latent_shape(self, image_size: int) -> tuple[int, int, int]:
    """(h, w, latent_dim) of a square image of side image_size."""
    return (*grid_shape(image_size, self.patch_size), self.latent_dim)

  def encode(self, x: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> float32 latents [B, H/p, W/p, latent_dim], each of norm sqrt(latent_dim)."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ImageAutoencoder expects images [B, H, W, 3]; got {x.shape}.")
    grid_shape(x.shape[1:3], self.patch_size)
    z = self.encoder(x.astype(jnp.float32) - self._mean())
    return l2_normalize(z) * jnp.sqrt(jnp.float32(self.latent_dim))

  def decode(self, z: jax.Array) -> jax.Array:
    """Latents [B, h, w, latent_dim] (any scale: the decoder reads them as they are) -> float32 images
    [B, h*p, w*p, 3] in [-1, 1]."""
    return jnp.clip(self.decoder(z.astype(jnp.float32)) + self._mean(), -1.0, 1.0)

  def __call__(self, x: jax.Array):
    """(recon [B, H, W, 3] unclipped, latents, {"recon_mse": [B]}): the training forward."""
    z = self.encode(x)
    recon = self.decoder(z) + self._mean()
    err = jnp.square(recon - x.astype(jnp.float32))
    return recon, z, {"recon_mse": jnp.mean(err.reshape(x.shape[0], -1), axis=-1)}
