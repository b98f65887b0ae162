"""Text-to-image through the causal decoder, drawing pixel colours patch by patch: a colour palette for
tokens (mmjax.encoders.palette, iGPT's colour clusters) and the decoder of mmjax.decoders.lm, one
position per patch, with a small head that draws the patch's pixels one after another.

  model = TextToImagePixels(config.model, vocab_size)   # config.model: palette, decoder, head, ...

Why (against TextToImageTokens, a VQ code per patch): a code is a whole patch, and a decoder with one
softmax over codes can only draw patches the tokenizer learnt from training images. Here a patch is
its p*p pixels' palette indices, each drawn by its own softmax, so nothing in the output stops any
colour from filling any shape. (Whether the decoder learns to draw a colour in a shape that no training
image pairs it with is another matter: on the shapes scenes it does so only in part; docs/results.md.)
The pixels of one patch are not independent (they form one piece of one shape), so they are drawn in
order, each given the patch's decoder state and the pixels before it (`PixelHead`; the inner loop of
RQ-Transformer's depth transformer, here a residual MLP over a running sum of the drawn pixels).

Sequences: the prefix [BOS, caption] (the decoder's own embedding, mmjax.models.image_tokens.
caption_prefix; the null condition is [BOS] alone), then N = (S / p)^2 positions: BOI, and the embedding
of patches 1 .. N-1 (the sum of a [p*p, K, width] table's rows, one per pixel and colour: a linear map
of the patch's one-hot pixels; or with config.model.pixel_embedding="value" a linear map of the patch's
pixel values, the palette's RGB of their colours), each plus the grid place (row and column embeddings,
`GridPosition`, with config.model.grid_posemb) of the patch it draws: position n's state predicts patch
n. With config.model.caption_conditioning="memory" the prefix is [BOS] alone and the decoder
cross-attends to the caption's word embeddings instead (caption_memory). Training reads the palette
indices of the image as fixed targets; the palette itself fits the pixels (its loss weighted by
config.model.palette_weight). A share config.model.cond_dropout of the captions is dropped to the null
condition, for classifier-free guidance (mmjax.sample.pixel_tokens).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from mmjax import layers
from mmjax.decoders.lm import Decoder, prepends_prefix
from mmjax.encoders.palette import PaletteTokenizer
from mmjax.encoders.vq import codebook_usage, grid_shape
from mmjax.models import flow_matching
from mmjax.models.contrastive import caption_tokens
from mmjax.models.image_tokens import (
  VOCAB_MULTIPLE,
  TextToImageTokens,
  caption_memory,
  caption_prefix,
  check_drawing_config,
)
from mmjax.models.text_to_image import to_model_space
from mmjax.tokenizer import PAD_ID

# How the decoder reads the caption: "prefix", the caption's tokens before the image, attending to
# each other (mmjax.models.image_tokens.caption_prefix); "memory", the caption's token embeddings
# cross-attended by every layer, never mixed with each other (caption_memory).
CAPTION_CONDITIONINGS = ("prefix", "memory")


def num_patches(model_config, image_size: int) -> int:
  """N, the generated positions of one image: (image_size / palette.patch_size)^2."""
  h, w = grid_shape(image_size, int(model_config.palette.get("patch_size", PaletteTokenizer.patch_size)))
  return h * w


# How a drawn pixel (place j, palette colour c) is embedded, as the decoder's patch input and in the pixel
# head's running sum: "table", a learnt vector per (j, c); "value", a linear map of the colour's RGB value
# per place, W_j rgb(c) (ViT's patch embedding of pixel values).
PIXEL_EMBEDDINGS = ("table", "value")


def pixel_rows(table: jax.Array, colours: jax.Array, palette: jax.Array | None = None) -> jax.Array:
  """colours int [..., P] -> [..., P, D], pixel j embedded by table [P, K, D] as row table[j, colours[...,
  j]] (a gather), or with palette [K, 3] by table [P, 3, D] as rgb(colours[..., j]) @ table[j]."""
  if palette is not None:
    return jnp.einsum("...pc,pcd->...pd", jnp.take(palette, colours.astype(jnp.int32), axis=0), table)
  p, k, d = table.shape
  flat = jnp.arange(p, dtype=jnp.int32) * k + colours.astype(jnp.int32)
  return jnp.take(table.reshape(p * k, d), flat, axis=0)


def check_pixel_embedding(embedding: str) -> None:
  if embedding not in PIXEL_EMBEDDINGS:
    raise ValueError(f"config.model.pixel_embedding={embedding!r}: use one of {PIXEL_EMBEDDINGS}.")


def embedding_table(module: nn.Module, name: str, embedding: str, palette_size: int, pixels: int, width, axis: str):
  """The parameter `name` of a pixel embedding (PIXEL_EMBEDDINGS) of `width` (logical axis `axis`):
  [P, K, width] for "table", [P, 3, width] (the RGB channels) for "value"."""
  check_pixel_embedding(embedding)
  rows, kind = (palette_size, "palette") if embedding == "table" else (3, "channels")
  init = layers.param_with_axes(nn.initializers.normal(0.02), ("patch", kind, axis))
  return module.param(name, init, (pixels, rows, width), jnp.float32)


class PixelHead(nn.Module):
  """Palette logits of a patch's pixels, pixel j given the patch's decoder state and pixels 0 .. j-1.

  z_j = project(state) + position_j + sum_{i<j} e(i, colour_i), e the pixel embedding (`embedding`,
  PIXEL_EMBEDDINGS: table[i, colour] or rgb(colour) @ table[i]); `depth` residual MLP blocks; a Dense to
  the K colours. The running sum is a bag of (place, colour) vectors, so z_j knows which pixel before j
  has which colour; training evaluates every j at once (an exclusive cumulative sum), drawing one j at a
  time (`logits` with the sum so far). `palette` [K, 3]: the colours' RGB values, for "value"."""

  palette_size: int
  pixels: int
  width: int = 64
  depth: int = 1
  mlp_dim: int = 128
  embedding: str = "table"
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.02)
    self.project = layers.Dense(self.width, ("embed",), ("pixel_embed",), dtype=self.dtype)
    self.table = embedding_table(
      self, "table", self.embedding, self.palette_size, self.pixels, self.width, "pixel_embed"
    )
    self.position = self.param(
      "position", layers.param_with_axes(init, ("patch", "pixel_embed")), (self.pixels, self.width), jnp.float32
    )
    self.norms = [layers.Norm(self.dtype) for _ in range(self.depth)]
    self.ups = [
      layers.Dense(self.mlp_dim, ("pixel_embed",), ("pixel_mlp",), dtype=self.dtype) for _ in range(self.depth)
    ]
    self.downs = [
      layers.Dense(self.width, ("pixel_mlp",), ("pixel_embed",), dtype=self.dtype, kernel_init=nn.initializers.zeros)
      for _ in range(self.depth)
    ]
    self.final_norm = layers.Norm(self.dtype)
    self.out = layers.Dense(self.palette_size, ("pixel_embed",), ("palette",), dtype=self.dtype)

  def state(self, hidden: jax.Array) -> jax.Array:
    """The decoder's states [..., D] projected to the head's width."""
    return self.project(hidden)

  def embed(self, j, colours: jax.Array, palette=None) -> jax.Array:
    """e(j, colours): [..., width] for int colours [...] of pixel j (an int or a traced index)."""
    return pixel_rows(self.table[j][None], colours[..., None], palette)[..., 0, :].astype(self.dtype)

  def logits(self, state: jax.Array, context: jax.Array, j) -> jax.Array:
    """Logits [..., K] of pixel j (an int or a traced index) from the projected state [..., width]
    and the sum of the earlier pixels' embeddings [..., width]."""
    return self._mlp(state + context + self.position[j].astype(self.dtype))

  def _mlp(self, z):
    for norm, up, down in zip(self.norms, self.ups, self.downs):
      z = z + down(nn.gelu(up(norm(z))))
    return self.out(self.final_norm(z)).astype(jnp.float32)

  def __call__(self, hidden: jax.Array, colours: jax.Array, palette=None) -> jax.Array:
    """Teacher-forced logits [B, N, P, K] for decoder states [B, N, D] and the patches' colours
    [B, N, P] (pixel j reads colours 0 .. j-1)."""
    emb = pixel_rows(self.table, colours, palette).astype(self.dtype)
    # Pixel j: the sum over i < j (shifted, not cumsum - emb, so that pixel j's colour never enters).
    context = jnp.pad(jnp.cumsum(emb[:, :, :-1], axis=2), ((0, 0), (0, 0), (1, 0), (0, 0)))
    z = self.project(hidden)[:, :, None] + context.astype(self.dtype) + self.position.astype(self.dtype)
    return self._mlp(z)


class GridPosition(nn.Module):
  """The embedding of a patch's place in the image's square grid of patches: a row vector plus a
  column vector (tables sized by the grid of the first call), so that positions in one column or row
  share a part, which a 1-D position table has to learn for every place apart."""

  width: int

  @nn.compact
  def __call__(self, index, n_patches: int) -> jax.Array:
    """[..., width] for patch indices `index` [...] (raster order; an int or traced) of a grid of
    n_patches; indices past the grid are clipped to its last place."""
    side = math.isqrt(n_patches)
    if side * side != n_patches:
      raise ValueError(f"GridPosition: {n_patches} patches are not a square grid.")
    table = lambda name: self.param(
      name, layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")), (side, self.width), jnp.float32
    )
    index = jnp.minimum(jnp.asarray(index, jnp.int32), n_patches - 1)
    return jnp.take(table("rows"), index // side, axis=0) + jnp.take(table("columns"), index % side, axis=0)


def grid_places(n_prefix: int, start, length: int, n_patches: int) -> jax.Array:
  """The 2-D rotary positions int32 [1, length, 2] of decoder positions start .. start + length - 1 of a
  sequence [prefix of n_prefix, one position per patch of a square grid of n_patches]: (1 + row, 1 +
  column) of the patch a position draws, (0, 0) for the prefix (the caption: no place in the image).
  `start` may be traced (the KV cache's step)."""
  side = math.isqrt(n_patches)
  if side * side != n_patches:
    raise ValueError(f"grid_places: {n_patches} patches are not a square grid.")
  patch = start + jnp.arange(length) - n_prefix
  place = jnp.stack([patch // side, patch % side], axis=-1) + 1
  return jnp.where((patch >= 0)[:, None], place, 0).astype(jnp.int32)[None]


class TextToImagePixels(nn.Module):
  """PaletteTokenizer (config.model.palette) + Decoder (config.model.decoder) + PixelHead
  (config.model.head).

  config keys: palette (levels, patch_size), decoder, head (width, depth, mlp_dim), caption_len (the prefix's
  caption slots), caption_conditioning (CAPTION_CONDITIONINGS), grid_posemb, grid_rope_theta (> 0: the
  decoder's self-attention rotates queries and keys by `grid_places`, half the head dims by the row and half
  by the column of the patch a position draws, RoPE-2D; 0: off), cond_dropout, word_dropout
  (flow_matching.drop_words: each caption token replaced by PAD with this probability in training),
  palette_weight, dtype, attention_implementation, remat, scan_layers.
  """

  config: ml_collections.ConfigDict
  vocab_size: int  # the text tokenizer's

  # Model-kind hooks (mmjax.models.kind).
  evaluator = "t2i"
  image_sampler = "pixels"  # mmjax.sample.text_to_image: patches drawn pixel by pixel, then the palette
  train_tasks = ("caption",)
  progress_metric = "pixel_accuracy"
  accumulates_gradients = True

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    m = config.model
    check_drawing_config(config, "palette", int(m.palette.get("patch_size", PaletteTokenizer.patch_size)))
    check_pixel_embedding(m.get("pixel_embedding", "table"))
    if not 0.0 <= float(m.get("word_dropout", 0.0)) < 1.0:
      raise ValueError(f"config.model.word_dropout={m.word_dropout} must be in [0, 1).")
    how = m.get("caption_conditioning", "prefix")
    if how not in CAPTION_CONDITIONINGS:
      raise ValueError(f"config.model.caption_conditioning={how!r}: use one of {CAPTION_CONDITIONINGS}.")
    if how == "memory" and int(m.decoder.get("cross_attention_every", 0)) != 1:
      raise ValueError(
        "config.model.caption_conditioning='memory' reads the caption by cross-attention in every decoder "
        "layer: set config.model.decoder.cross_attention_every=1."
      )
    theta = float(m.get("grid_rope_theta", 0.0))
    head_dim = int(m.decoder.get("head_dim") or int(m.decoder.width) // int(m.decoder.num_heads))
    if theta < 0 or (theta and head_dim % 4):
      raise ValueError(
        f"config.model.grid_rope_theta={theta}: 0 (off) or > 0 with a decoder head_dim divisible by 4 "
        f"(two axes of rotated pairs); head_dim is {head_dim}."
      )
    needed = 1 + int(m.caption_len) + num_patches(m, int(config.data.image_size))
    if int(m.decoder.max_len) < needed:
      raise ValueError(
        f"config.model.decoder.max_len={m.decoder.max_len} < {needed} positions: [BOS, caption] "
        f"({1 + int(m.caption_len)}) + one per patch; set config.model.decoder.max_len to at least {needed}."
      )

  # The same batches, init inputs and prompt limit as the VQ kind's: images and captions.
  batch_keys = staticmethod(TextToImageTokens.batch_keys)
  init_inputs = staticmethod(TextToImageTokens.init_inputs)
  max_prompt_len = staticmethod(TextToImageTokens.max_prompt_len)

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    self.tokenizer = PaletteTokenizer(**c.palette.to_dict())
    decoder = c.decoder.to_dict()
    if self.grid_rope_theta:
      decoder["style"] = {**(decoder.get("style") or {}), "rope_theta": self.grid_rope_theta}
    self.decoder = Decoder(
      self.total_vocab,
      **decoder,
      implementation=c.attention_implementation,
      dtype=dtype,
      remat=str(c.remat),
      scan_layers=bool(c.scan_layers),
    )
    self.head = PixelHead(
      self.palette_size, self.pixels_per_patch, **c.head.to_dict(), embedding=self.pixel_embedding, dtype=dtype
    )
    if self.caption_in_memory:
      self.caption_posemb = self.param(
        "caption_posemb",
        layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
        (int(c.caption_len), int(c.decoder.width)),
        jnp.float32,
      )
    if self.grid_posemb:
      self.grid = GridPosition(int(c.decoder.width))
    self.patch_table = embedding_table(
      self, "patch_table", self.pixel_embedding, self.palette_size, self.pixels_per_patch, int(c.decoder.width), "embed"
    )

  @property
  def pixel_embedding(self) -> str:
    """config.model.pixel_embedding (PIXEL_EMBEDDINGS; default "table", for configs from before the key)."""
    return self.config.get("pixel_embedding", "table")

  def colour_values(self):
    """The palette's RGB values [K, 3] for the "value" pixel embedding (None for "table"): fixed inputs
    here (the palette learns from its own loss alone)."""
    if self.pixel_embedding != "value":
      return None
    return jax.lax.stop_gradient(self.tokenizer.palette)

  @property
  def caption_in_memory(self) -> bool:
    """config.model.caption_conditioning == "memory" (default "prefix", for configs without the key)."""
    return self.config.get("caption_conditioning", "prefix") == "memory"

  @property
  def grid_posemb(self) -> bool:
    """config.model.grid_posemb (default off, for configs and workdirs from before the key)."""
    return bool(self.config.get("grid_posemb", False))

  @property
  def grid_rope_theta(self) -> float:
    """config.model.grid_rope_theta (default 0, off: configs and workdirs from before the key)."""
    return float(self.config.get("grid_rope_theta", 0.0))

  def places(self, cond, start, n_inputs: int, n_patches: int):
    """The decoder's rotary positions (grid_places) for a call of n_inputs image positions from `start`,
    after the prefix when `start` is the int 0 (the decoder prepends it then), or None without
    config.model.grid_rope_theta."""
    if not self.grid_rope_theta:
      return None
    n_prefix = 0 if cond.prefix is None else cond.prefix.shape[1]
    return grid_places(n_prefix, start, n_inputs + (n_prefix if prepends_prefix(start) else 0), n_patches)

  def states(self, inputs, cond):
    """The decoder's final states [B, N, D] of a whole image's inputs [B, N, D] (`inputs`) after the
    condition."""
    n = inputs.shape[1]
    return self.decoder(inputs, cond, output="hidden", positions=self.places(cond, 0, n, n))

  @property
  def palette_size(self) -> int:
    return int(self.config.palette.get("levels", PaletteTokenizer.levels)) ** 3

  @property
  def pixels_per_patch(self) -> int:
    return int(self.config.palette.get("patch_size", PaletteTokenizer.patch_size)) ** 2

  @property
  def boi_id(self) -> int:
    return self.vocab_size

  @property
  def total_vocab(self) -> int:
    """The decoder's vocabulary: the text's ids and BOI, rounded up to a multiple of VOCAB_MULTIPLE (its
    table splits over the mesh's tensor axis)."""
    return -(-(self.vocab_size + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

  def num_patches(self, image_size: int) -> int:
    return num_patches(self.config, image_size)

  def condition(self, tokens, lengths):
    """The decoder's Conditioning of a caption (config.model.caption_conditioning)."""
    slots = int(self.config.caption_len)
    if self.caption_in_memory:
      return caption_memory(self.decoder, tokens, lengths, slots, self.caption_posemb)
    return caption_prefix(self.decoder, tokens, lengths, slots)

  def patch_inputs(self, colours):
    """The decoder's input embeddings [B, M, D] of patches' colours int [B, M, P]."""
    rows = pixel_rows(self.patch_table, colours, self.colour_values())
    return jnp.sum(rows, axis=-2).astype(jnp.dtype(self.config.dtype))

  def boi_inputs(self, b: int):
    """The BOI embedding [b, 1, D] that starts every image."""
    return self.decoder.embed(jnp.full((b, 1), self.boi_id, jnp.int32))

  def grid_position(self, index, n_patches: int):
    """What the input of the position that draws patch `index` [...] adds for the patch's grid place
    (GridPosition, [..., D]), or 0 without config.model.grid_posemb."""
    if not self.grid_posemb:
      return jnp.zeros((), jnp.dtype(self.config.dtype))
    return self.grid(index, n_patches).astype(jnp.dtype(self.config.dtype))

  def inputs(self, colours):
    """[BOI, patches 1 .. N-1] embedded, each plus the grid place of the patch its position draws:
    [B, N, D] for colours [B, N, P]."""
    n = colours.shape[1]
    x = jnp.concatenate([self.boi_inputs(colours.shape[0]), self.patch_inputs(colours[:, :-1])], axis=1)
    return x + self.grid_position(jnp.arange(n), n)

  def decode(self, inputs, cond, start, n_patches: int | None = None):
    """One KV-cache decoding call (mmjax.sample.pixel_tokens): input embeddings [B, T, D] (or ids, for
    the cache's shapes) -> the decoder's states [B, T, D]. n_patches: the image's, for the grid places
    of later calls; the first call (`start` the int 0: the prefix, then none or all of the image's
    positions) may leave it out."""
    if n_patches is None and self.grid_rope_theta and not prepends_prefix(start):
      raise ValueError("TextToImagePixels.decode: a call past the prefix needs n_patches for the grid places.")
    positions = self.places(cond, start, inputs.shape[1], n_patches or max(inputs.shape[1], 1))
    return self.decoder(inputs, cond, start=start, decode=True, output="hidden", positions=positions)

  def pixel_state(self, hidden):
    return self.head.state(hidden)

  def pixel_logits(self, state, context, j):
    return self.head.logits(state, context, j)

  def pixel_input(self, j, colours):
    """The head's embedding [..., width] of pixel j's drawn colours [...] (its running sum's term)."""
    return self.head.embed(j, colours, self.colour_values())

  def decode_image(self, colours, image_size: int):
    """Colours [B, N, P] -> float32 images [B, S, S, 3] in model space."""
    return self.tokenizer.decode(colours, grid_shape(image_size, self.tokenizer.patch_size))

  def encode_image(self, x):
    """Model-space images [B, S, S, 3] -> colours int32 [B, N, P]."""
    return self.tokenizer.encode(x)

  def index_logits(self, colours, tokens, lengths):
    """Teacher-forced palette logits [B, N, P, K] of colours int [B, N, P] given captions (lengths 0:
    the null condition): what the drawing's sampler saw at each pixel (mmjax.sample.rerank)."""
    hidden = self.states(self.inputs(colours), self.condition(tokens, lengths))
    return self.head(hidden, colours, self.colour_values())

  def __call__(self, x, tokens, lengths):
    """Teacher-forced pixel logits [B, N, P, K] for images x (model space) and their captions."""
    colours, _ = self.tokenizer(x)
    return self.index_logits(colours, tokens, lengths)

  def loss_sums(self, batch) -> tuple:
    """Per example: the mean cross-entropy of its pixels' colours + palette_weight x the palette loss,
    summed over the examples that have a caption (weight = their count). Also the pixels' and whole
    patches' accuracy on the conditioned rows, the palette's reconstruction MSE and its usage."""
    c = self.config
    x0 = to_model_space(batch["image"])
    tokens, lengths = caption_tokens(batch["target_out"], batch["target_mask"])
    valid = (lengths > 0).astype(jnp.float32)
    colours, pal = self.tokenizer(x0)
    colours = jax.lax.stop_gradient(colours)
    k_cond, k_words = jax.random.split(self.make_rng("sample"))
    cond_len, dropped = flow_matching.drop_condition(k_cond, lengths, float(c.cond_dropout))
    tokens = flow_matching.drop_words(k_words, tokens, float(c.get("word_dropout", 0.0)), PAD_ID)
    logits = self.index_logits(colours, tokens, cond_len)
    xent = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, colours), axis=(1, 2))
    correct = jnp.argmax(logits, axis=-1) == colours
    drawn = valid * (1.0 - dropped)
    weight = jnp.sum(valid)
    rate = lambda v: jnp.sum(drawn * v) * weight / jnp.maximum(jnp.sum(drawn), 1.0)
    usage = codebook_usage(colours, self.palette_size)
    sums = {
      "pixel_accuracy": rate(jnp.mean(correct.astype(jnp.float32), axis=(1, 2))),
      "patch_accuracy": rate(jnp.mean(jnp.all(correct, axis=-1).astype(jnp.float32), axis=1)),
      "pixel_xent": jnp.sum(valid * xent),
      "palette_mse": jnp.sum(valid * pal["palette"]) / 3.0,
      "palette_used_fraction": usage["used_fraction"] * weight,
      "weight": weight,
    }
    return jnp.sum(valid * (xent + float(c.palette_weight) * pal["palette"])), sums
