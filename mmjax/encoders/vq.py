"""A VQ image tokenizer: images <-> a grid of discrete codes, for models that generate images as tokens.

    codes = tok.apply(v, images, method=tok.encode)                  # [B, H, W, 3] -> int32 [B, h*w]
    images = tok.apply(v, codes, (h, w), method=tok.decode)          # -> float32 [B, H, W, 3]
    recon, codes, losses = tok.apply(v, images)                      # training: losses["recon_mse"], ...

A causal decoder (Parti, Chameleon) then models an image as the h*w codes in row-major order, like
text. Images are in model space: float32 in [-1, 1] (uint8 / 127.5 - 1); (h, w) = (H, W) / patch_size.

The pieces (VQ-VAE, van den Oord et al. 2017, with ViT-VQGAN's factorised codes, Yu et al. 2022):

  encoder   a 3x3 conv stem at full resolution, a conv with kernel = stride = patch_size (one
            feature vector per patch), `depth` residual conv blocks on the code grid, a projection
            to `code_dim`: z [B, h, w, code_dim].
  quantize  z and the codebook [codebook_size, code_dim] are both l2-normalised and each z takes
            its nearest entry (the largest cosine). The decoder sees q = z + sg(e - z): the value
            of the entry, the gradient of z (straight-through estimator).
  decoder   the mirror image: a projection up to `width`, `depth` residual blocks on the grid, a
            depth-to-space upsampling (a Dense to patch_size^2 x width/2 features per grid cell,
            rearranged into the patch: a transposed conv with kernel = stride = patch_size) and a
            3x3 conv to the 3 channels at full resolution (after `refine` residual blocks there).

quantizer="fsq" (finite scalar quantization, Mentzer et al. 2023) replaces the codebook: the
encoder projects to len(fsq_levels) dims, each bounded by tanh to its level count and rounded
(straight-through), and the code is the mixed-radix number of the levels (mmjax.layers.
mixed_radix_digits; codebook_size must be their product). Every combination of per-dimension levels
is a code whether or not the training images produced it, so an image part never seen whole can
still be written as one (measured on held-out colour-shape pairs of the shapes scenes: VQ codes
round-trip their objects at 0.508, FSQ's at 0.715; docs/results.md). No codebook or commitment
terms (they are 0).

Losses, each per example ([B]); the caller sums them:
  recon_mse    mean over pixels and channels of (recon - x)^2.
  codebook     mean over positions and code dims of (sg(z) - e)^2: moves the selected entries
               towards the encoder outputs (the only gradient the codebook gets).
  commitment   commitment * mean of (z - sg(e))^2: keeps the encoder close to its entries.
z and e are the normalised vectors, so both terms are (2 - 2 cos(z, e)) / code_dim per position.

Why pixel_mean: the networks work on x - pixel_mean (the caller's estimate of the data's mean colour;
0 suits data centred in model space). Left to learn a far-off mean colour itself (the shapes scenes
are mostly black: mean about -0.96), the decoder first learns it through the codes, which pushes
every encoder output the same way; after l2-normalisation they all land on a handful of entries and
take long to spread again. Measured on the test's fit (tests/test_vq.py, 250 Adam steps at 1e-3 on
32x32 shapes scenes): pixel_mean 0 gives 23.4 dB and 54 codes used, the data mean 27.2 to 27.6 dB and
100 to 120 codes. For the same reason the projection to code_dim has no bias: an offset shared by
every z is a pull of all of them towards one direction once normalised.

Why no dead-code restarts or EMA codebook: with a codebook looked up in a low-dimensional unit
sphere, the entries and the encoder outputs live in the same small bounded space from the start, so
entries near the encoder outputs keep getting gradient (ViT-VQGAN reports this alone takes codebook
usage from a few percent to nearly all entries). Restarts would add state and a schedule to the
module; `codebook_usage` reports the usage as a metric, so a run that needs them shows it. Most
patches of a sparse scene are background, so the perplexity stays low (about 2 on the shapes scenes)
even when many entries are used.
"""

from __future__ import annotations

import math
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import layers
from mmjax.sharding import constrain

_EPS = 1e-6
QUANTIZERS = ("vq", "fsq")


def grid_shape(image_size: int | tuple[int, int], patch_size: int) -> tuple[int, int]:
  """(h, w) of the code grid of an image of side `image_size` (an int or (H, W)); ValueError unless
  patch_size divides both sides."""
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
  if len(hw) != 2 or patch_size < 1 or any(s < 1 or s % patch_size for s in hw):
    raise ValueError(
      f"VQ tokenizer: image size {hw[0]}x{hw[-1]} is not a positive multiple of patch_size={patch_size}; "
      "use images whose sides patch_size divides (or another patch_size)."
    )
  return hw[0] // patch_size, hw[1] // patch_size


def l2_normalize(x: jax.Array, eps: float = _EPS) -> jax.Array:
  """x / max(|x|, eps) over the last dim (float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def quantize(z: jax.Array, codebook: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """Nearest-entry lookup of z [..., d] in codebook [K, d], both l2-normalised.

  Returns (q [..., d], codes int32 [...], losses) where q = zn + sg(en[codes] - zn) (the forward
  value is the normalised entry, the gradient passes to z through its normalisation) and losses are
  per position, mean over d: "codebook" = (sg(zn) - en)^2, "commitment" = (zn - sg(en))^2 (unscaled:
  the caller multiplies by beta). For unit vectors |zn - en|^2 = 2 - 2 zn.en, so the nearest entry
  is the one of largest dot product."""
  zn = l2_normalize(z)
  en = l2_normalize(codebook)
  codes = jnp.argmax(jnp.einsum("...d,kd->...k", zn, en), axis=-1).astype(jnp.int32)
  e = jnp.take(en, codes, axis=0)
  q = zn + jax.lax.stop_gradient(e - zn)
  losses = {
    "codebook": jnp.mean(jnp.square(jax.lax.stop_gradient(zn) - e), axis=-1),
    "commitment": jnp.mean(jnp.square(zn - jax.lax.stop_gradient(e)), axis=-1),
  }
  return q, codes, losses


def fsq(z: jax.Array, levels: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
  """Finite scalar quantization of z [..., len(levels)] -> (q [..., D] in [-1, 1], codes int32 [...]).

  Dim d is bounded to (L_d - 1)/2 (1 + 1e-3) tanh(z_d + shift) - offset and rounded to the nearest
  integer, straight-through; an even L_d is offset by half a step (offset 0.5, shift arctanh(0.5 /
  half-width), so that z = 0 still lands on a middle level) so that rounding yields exactly L_d
  values. q is the level divided by L_d // 2, the code sum_d (level_d + L_d // 2) prod(L[:d])."""
  sizes = np.asarray(levels, np.float64)
  half_l = (sizes - 1) * (1 + 1e-3) / 2
  offset = np.where(sizes % 2 == 0, 0.5, 0.0)
  shift = np.arctanh(offset / half_l)
  bounded = jnp.tanh(z.astype(jnp.float32) + jnp.asarray(shift, jnp.float32)) * jnp.asarray(half_l, jnp.float32)
  bounded = bounded - jnp.asarray(offset, jnp.float32)
  level = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)
  half = jnp.asarray(sizes // 2, jnp.float32)
  basis = jnp.asarray(np.cumprod((1,) + tuple(int(v) for v in levels[:-1])), jnp.int32)
  codes = jnp.sum(jnp.round(level + half).astype(jnp.int32) * basis, axis=-1)
  return level / half, codes


def fsq_vectors(codes: jax.Array, levels: tuple[int, ...]) -> jax.Array:
  """codes int [...] -> the quantized vectors [..., len(levels)] that `fsq` gives them."""
  half = jnp.asarray(np.asarray(levels) // 2, jnp.float32)
  return (layers.mixed_radix_digits(codes, levels).astype(jnp.float32) - half) / half


def codebook_usage(codes: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Codebook metrics of a batch of codes (any shape; jit-able): `used_fraction` = the fraction of
  the entries that occur, `perplexity` = exp(entropy) of their empirical distribution (1 when one
  entry takes everything, codebook_size when all are used equally)."""
  counts = jnp.zeros((codebook_size,), jnp.float32).at[codes.reshape(-1)].add(1.0)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return {"used_fraction": jnp.mean((counts > 0).astype(jnp.float32)), "perplexity": jnp.exp(entropy)}


def _constrain_map(x: jax.Array) -> jax.Array:
  """[B, H, W, C] feature maps: batch on data x fsdp, the rest replicated."""
  return constrain(x, ("act_batch", None, None, "act_embed"))


class Conv(nn.Module):
  """2-D convolution ("SAME" padding) whose kernel and bias carry logical axis names."""

  features: int
  kernel: int = 3
  stride: int = 1
  dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    return nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.stride, self.stride),
      padding="SAME",
      dtype=self.dtype,
      kernel_init=layers.param_with_axes(self.kernel_init, ("conv_height", "conv_width", "channels", "conv_out")),
      bias_init=layers.param_with_axes(nn.initializers.zeros, ("conv_out",)),
      name="conv",
    )(x)


class ResBlock(nn.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))); the second conv starts at zero, so the block starts
  as the identity."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    h = Conv(c, dtype=self.dtype, name="conv_0")(nn.silu(layers.Norm(self.dtype, name="norm_0")(x)))
    h = nn.silu(layers.Norm(self.dtype, name="norm_1")(h))
    h = Conv(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="conv_1")(h)
    return _constrain_map(x + h)


class Encoder(nn.Module):
  """[B, H, W, 3] -> z [B, H/p, W/p, code_dim] (unnormalised)."""

  code_dim: int
  patch_size: int
  width: int
  depth: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.silu(Conv(self.width, 3, dtype=self.dtype, name="stem")(x.astype(self.dtype)))
    h = _constrain_map(Conv(self.width, self.patch_size, self.patch_size, dtype=self.dtype, name="down")(h))
    for i in range(self.depth):
      h = ResBlock(self.dtype, name=f"block_{i}")(h)
    h = layers.Norm(self.dtype, kind="rmsnorm", name="norm")(h)
    z = layers.Dense(self.code_dim, ("channels",), ("conv_out",), use_bias=False, dtype=self.dtype, name="to_code")(h)
    return constrain(z.astype(jnp.float32), ("act_batch", None, None, None))


class Decoder(nn.Module):
  """q [B, h, w, code_dim] -> [B, h*p, w*p, 3]."""

  patch_size: int
  width: int
  depth: int
  refine: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q):
    p, up = self.patch_size, max(self.width // 2, 8)
    h = _constrain_map(layers.Dense(self.width, ("channels",), ("conv_out",), dtype=self.dtype, name="from_code")(q))
    for i in range(self.depth):
      h = ResBlock(self.dtype, name=f"block_{i}")(h)
    h = nn.silu(layers.Norm(self.dtype, name="norm")(h))
    h = layers.Dense(p * p * up, ("channels",), ("conv_out",), dtype=self.dtype, name="up")(h)
    h = _constrain_map(einops.rearrange(h, "b h w (p q c) -> b (h p) (w q) c", p=p, q=p))
    for i in range(self.refine):
      h = ResBlock(self.dtype, name=f"refine_{i}")(h)
    out = Conv(3, 3, dtype=self.dtype, name="to_rgb")(nn.silu(h))
    return constrain(out.astype(jnp.float32), ("act_batch", None, None, None))


class VQTokenizer(nn.Module):
  """Images [B, H, W, 3] in [-1, 1] <-> codes int32 [B, (H/p)(W/p)] (row-major); module docstring.

  encode / decode are the tokenizer; __call__ is the training forward. __call__'s recon is not
  clipped (the loss needs its gradient everywhere); decode clips to [-1, 1] since it makes images."""

  codebook_size: int = 512  # with quantizer "fsq": prod(fsq_levels)
  code_dim: int = 16  # lookup in a low-dimensional, l2-normalised space (ViT-VQGAN's factorised codes)
  quantizer: str = "vq"  # QUANTIZERS: "vq" nearest codebook entry, "fsq" finite scalar (module doc)
  fsq_levels: tuple[int, ...] = (8, 5, 5, 5)  # "fsq": levels per code dimension (code_dim is unused)
  patch_size: int = 4  # image side / patch_size = code grid side
  width: int = 64  # conv channels
  depth: int = 2  # residual conv blocks on each side
  # Residual conv blocks at full resolution after the decoder's upsampling (width / 2 channels): what
  # sharpens the edges of small objects, which a patch's code alone places only approximately.
  refine: int = 0
  commitment: float = 0.25  # beta of the commitment term
  # Training forward only: decode one row in every recon_every (rows 0, k, 2k, ...), while the codes
  # and the codebook terms cover the whole batch. The decoder's full-resolution refinement blocks are
  # most of the tokenizer's FLOPs, and one image's patches teach it nearly as much as its neighbour's.
  # recon_mse stays per example: k x the error on a decoded row, 0 on the others, so that its batch sum
  # estimates the full one. The rows are taken as [B/k, k] -> [:, 0], so that a batch split in
  # contiguous blocks over the mesh keeps each device's share local (B/k divisible by the devices; a
  # batch k does not divide, such as init's single row, is sliced [::k]: the same rows).
  recon_every: int = 1
  # The mean colour of the data in model space (e.g. the per-channel mean over a few training batches):
  # the networks see and predict x - pixel_mean. Module docstring, "Why pixel_mean".
  pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
  dtype: Any = jnp.float32

  def setup(self):
    if self.quantizer not in QUANTIZERS:
      raise ValueError(f"config.model.image_tokenizer.quantizer={self.quantizer!r}: use one of {QUANTIZERS}.")
    self.decoder = Decoder(self.patch_size, self.width, self.depth, self.refine, self.dtype)
    if self.quantizer == "fsq":
      levels = tuple(int(v) for v in self.fsq_levels)
      if not levels or min(levels) < 2 or math.prod(levels) != self.codebook_size:
        raise ValueError(
          f"config.model.image_tokenizer: fsq_levels={levels} (each >= 2) make {math.prod(levels)} codes but "
          f"codebook_size={self.codebook_size}; set codebook_size to the levels' product."
        )
      self.encoder = Encoder(len(levels), self.patch_size, self.width, self.depth, self.dtype)
      return
    self.encoder = Encoder(self.code_dim, self.patch_size, self.width, self.depth, self.dtype)
    self.codebook = self.param(
      "codebook",
      layers.param_with_axes(nn.initializers.normal(1.0), ("vocab", "channels")),
      (self.codebook_size, self.code_dim),
      jnp.float32,
    )

  def _mean(self):
    return jnp.asarray(self.pixel_mean, jnp.float32)

  def _check(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"VQTokenizer expects images [B, H, W, 3]; got {x.shape}.")
    return grid_shape(x.shape[1:3], self.patch_size)

  def _quantize(self, x):
    h, w = self._check(x)
    z = self.encoder(x.astype(jnp.float32) - self._mean())
    if self.quantizer == "fsq":
      q, codes = fsq(z, tuple(self.fsq_levels))
      zero = jnp.zeros(codes.shape, jnp.float32)
      losses = {"codebook": zero, "commitment": zero}
    else:
      q, codes, losses = quantize(z, self.codebook)
    return q, constrain(codes.reshape(x.shape[0], h * w), ("act_batch", "act_len")), losses

  def encode(self, x: jax.Array) -> jax.Array:
    """[B, H, W, 3] -> int32 codes [B, h*w], row-major over the (H/p, W/p) grid."""
    return self._quantize(x)[1]

  def decode(self, codes: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """codes int [B, h*w] on a grid (h, w) -> float32 images [B, h*p, w*p, 3] in [-1, 1]."""
    h, w = grid
    if codes.ndim != 2 or codes.shape[1] != h * w:
      raise ValueError(f"VQTokenizer.decode: codes {codes.shape} do not hold a {h}x{w} grid per row.")
    if self.quantizer == "fsq":
      e = fsq_vectors(codes, tuple(self.fsq_levels))
    else:
      e = jnp.take(l2_normalize(self.codebook), codes.astype(jnp.int32), axis=0)
    return jnp.clip(self.decoder(e.reshape(codes.shape[0], h, w, e.shape[-1])) + self._mean(), -1.0, 1.0)

  def __call__(self, x: jax.Array):
    """(recon [ceil(B / recon_every), H, W, 3] unclipped, codes [B, h*w], per-example losses [B]
    {recon_mse, codebook, commitment}); recon_every: the field's comment."""
    q, codes, losses = self._quantize(x)
    b = x.shape[0]
    k = int(self.recon_every)
    if k < 1:
      raise ValueError(f"VQTokenizer: recon_every={k} must be >= 1.")
    # The same rows either way; the reshape keeps a block-sharded batch local (field comment).
    every = lambda v: v.reshape(b // k, k, *v.shape[1:])[:, 0] if b % k == 0 else v[::k]
    x_r = every(x)
    recon = self.decoder(every(q)) + self._mean()
    per_example = lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=-1)
    recon_mse = per_example(jnp.square(recon - x_r.astype(jnp.float32)))
    if k > 1:
      recon_mse = jnp.zeros((b,), jnp.float32).at[::k].set(k * recon_mse)
    return (
      recon,
      codes,
      {
        "recon_mse": recon_mse,
        "codebook": per_example(losses["codebook"]),
        "commitment": self.commitment * per_example(losses["commitment"]),
      },
    )
