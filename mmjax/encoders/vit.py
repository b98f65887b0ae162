"""Vision Transformer image encoder: patches -> tokens [B, N, D]."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers

STEMS = ("patch", "conv", "conv+patch", "hypercolumn")


class ViT(nn.Module):
  """Patch embedding, learned or sin-cos positions, pre-norm blocks, final norm.

  Images arrive as uint8 [B, H, W, 3] (or float in [0, 1]); they are scaled to [-1, 1] here so the
  data pipeline can ship compact uint8 batches.

  stem="patch" embeds each patch_size x patch_size patch linearly (the original ViT). stem="conv"
  first runs a few stride-2 3x3 convolutions (each halving the resolution, channels in
  `stem_channels`) and then embeds patches of the resulting feature map, so one token still
  covers patch_size x patch_size pixels. Early convolutions give the model translation-invariant
  local detectors, which makes small models learn object-level features in far fewer steps
  (Xiao et al. 2021, "Early convolutions help transformers see better"). stem="conv+patch" adds
  the linear embedding of each patch's own pixels to the conv features' embedding: a skip around
  the stem, so that what pixels hold linearly (a patch's colours) reaches the tokens whatever the
  convolutions learn first. A linear probe of a trained conv-stem ViT's tokens read an object's
  colour at 0.36 (6 colours; 0.996 in the stem's own 16x16 map): the stride-2 layer to the token
  grid had dropped most of it, and a decoder asked for an object by its colour could not find it.
  With the skip the probe reads 0.90 (docs/results.md, "Grounding"). stem="hypercolumn" adds the
  same kind of linear skip from every intermediate conv map too (the cells of each map under the
  token), so a token is a linear embedding of its patch's whole hypercolumn (Hariharan et al. 2015):
  features that a later stride-2 layer has not yet learnt to keep (an object's outline, half-way
  down the stem) still reach the tokens: the probe then read shape at 0.98 (0.75 with the pixel
  skip alone; 3 shapes, one seed).

  coord_channels=True appends each pixel's x and y (scaled to [-1, 1]) as two more input channels
  (CoordConv, Liu et al. 2018): a token then knows where inside its patch an object sits, which
  position embeddings on the token grid cannot say ("is the <named> object on the left?" for an
  object astride the middle).

  Pretrained towers (mmjax.pretrained) set the rest: class_token (CLIP, ViT), patch_bias (False for
  CLIP), pre_norm (CLIP's norm before the blocks), pixel_mean / pixel_std (the checkpoint's image
  normalisation of [0, 1] pixels; 0.5 / 0.5 is the [-1, 1] scaling of mmjax's own models),
  head_dim, mlp_activation and the block `style` (layers.STYLE_FIELDS).
  """

  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  patch_size: int = 8
  posemb: str = "learn"  # "learn" | "sincos2d"
  stem: str = "patch"  # STEMS
  stem_channels: tuple[int, ...] = (32, 64)
  coord_channels: bool = False
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES
  scan_layers: bool = False  # nn.scan over the blocks (parameters stacked on a "layers" axis)
  head_dim: int | None = None  # default width // num_heads
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  style: dict | None = None  # layers.STYLE_FIELDS
  class_token: bool = False
  patch_bias: bool = True
  pre_norm: bool = False
  pixel_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  pixel_std: tuple[float, ...] = (0.5, 0.5, 0.5)

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
    x = (x - jnp.asarray(self.pixel_mean, jnp.float32)) / jnp.asarray(self.pixel_std, jnp.float32)
    if self.coord_channels:
      x = jnp.concatenate([x, jnp.broadcast_to(jnp.asarray(layers.pixel_coordinates(h, w)), (x.shape[0], h, w, 2))], -1)
    if self.stem not in STEMS:
      raise ValueError(f"ViT: unknown stem {self.stem!r}; use one of {', '.join(map(repr, STEMS))}.")
    maps = [x] if self.stem == "patch" else [x, *self._conv_stem(x)]  # the pixels, then each conv's map
    embed = lambda name, bias: layers.Dense(
      self.width, ("patch",), ("embed",), use_bias=bias, dtype=self.dtype, name=name
    )
    # Map i has 1/2**i of the image's resolution, so p / 2**i of its pixels span one token.
    x = embed("patch_embed", self.patch_bias)(_patches(maps[-1], p >> (len(maps) - 1)))
    skips = {"conv+patch": 1, "hypercolumn": len(maps) - 1}.get(self.stem, 0)  # the maps before the last
    for i in range(skips):
      x = x + embed("pixel_embed" if i == 0 else f"stem_{i - 1}_embed", False)(_patches(maps[i], p >> i))
    style = layers.block_style(self.style, "config.model.vit")
    if self.class_token:
      cls = self.param("cls", layers.param_with_axes(nn.initializers.normal(0.02), ("embed",)), (self.width,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, self.width)), x], axis=1)
    n = x.shape[1]
    if self.posemb == "learn":
      pos = self.param(
        "posemb", layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")), (n, self.width), jnp.float32
      )
    elif self.posemb == "sincos2d":
      pos = jnp.asarray(layers.sincos_2d(h // self.patch_size, w // self.patch_size, self.width))
      if self.class_token:
        pos = jnp.concatenate([jnp.zeros((1, self.width)), pos])
    else:
      raise ValueError(f"ViT: unknown posemb {self.posemb!r}; use 'learn' or 'sincos2d'.")
    x = layers.constrain_tokens(x + pos.astype(x.dtype)[None])
    norm = lambda name: layers.Norm(self.dtype, style.get("norm", "layernorm"), style.get("norm_eps", 1e-6), name=name)
    if self.pre_norm:
      x = norm("pre_norm")(x)
    block = dict(
      num_heads=self.num_heads,
      head_dim=self.head_dim or self.width // self.num_heads,
      mlp_dim=self.mlp_dim,
      implementation=self.implementation,
      dtype=self.dtype,
      mlp_activation=self.mlp_activation,
      **style,
    )
    x = layers.run_blocks(x, depth=self.depth, block=block, remat=self.remat, scan=self.scan_layers)
    return norm("norm")(x)

  def _conv_stem(self, x):
    """Returns the feature map after each stride-2 convolution (each at half the previous resolution)."""
    if self.patch_size % 2 ** len(self.stem_channels):
      raise ValueError(
        f"ViT: conv stem with {len(self.stem_channels)} stride-2 layers needs patch_size "
        f"divisible by {2 ** len(self.stem_channels)}; got {self.patch_size}."
      )
    maps = []
    for i, channels in enumerate(self.stem_channels):
      x = nn.Conv(
        channels,
        (3, 3),
        strides=(2, 2),
        padding="SAME",
        dtype=self.dtype,
        kernel_init=layers.param_with_axes(nn.initializers.lecun_normal(), (None, None, "channels", "conv_out")),
        bias_init=layers.param_with_axes(nn.initializers.zeros, ("conv_out",)),
        name=f"stem_{i}",
      )(x)
      x = nn.gelu(x)
      maps.append(x)
    return maps


def _patches(x, p: int):
  """[B, H, W, C] -> [B, (H/p)(W/p), p*p*C]: each p x p patch flattened, row-major over the grid."""
  return einops.rearrange(x, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=p, q=p)
