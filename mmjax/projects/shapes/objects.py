"""Object-centric image encoder: pixels -> one token per object, related by distance.

Questions such as "what shape is the object closest to the red one?" ask about pairs of objects
and their distances. A ViT spreads each object over several patches and has no notion of "the
other object nearest to this one"; in this repository's measurements (README "Measured results")
those questions stayed at chance on pixels, and even on exact object tokens they were learned
within the main job's budget only with a distance prior whose near-looking heads skip the object
itself. This encoder builds that structure from pixels:

1. grouping: soft k-means over the colours of the pixels (KMeansSlots), one slot per colour
   cluster, each slot's centre starting at one of the image's own pixels (farthest-point
   sampling). Colour is the right grouping cue for flat-coloured scenes like the embedded shapes
   data; photographs would need a learned grouping (see KMeansSlots for why the learned ones
   tried here did not hold);
2. what each slot holds: the mean, over its pixels, of learned local appearance features (a 3x3
   convolution), which tells the object's shape;
3. geometry read off each slot's final mask: mass (log fraction of the image), centroid, spread,
   correlation and skew. These are exact functions of the mask, so positions need no learning;
4. relation layers over the slots. Each head's logits add -slope_h * |c_i - c_j|^2 to the usual
   content term, and the first `self_excluding_heads` heads never attend to the slot itself, so a
   head with a positive slope reads the *other* object nearest to each object and one with a
   negative slope the furthest. The first `geometric_heads` heads drop the content term, so that
   what they read cannot drift to other objects during training;
5. with `clean_tokens`, each object's token from before the relation layers goes out beside its
   related token, so that questions about the object itself read a token without its neighbours
   mixed in;
6. with `neighbour_tokens`, each object also goes out paired with its nearest and with its
   furthest other object: the partner's clean token plus a projection of the object's own, so
   that "the object closest to the red one" is one cross-attention read (README "Measured
   results": the distance questions went from being learned in some runs to 0.97 and more).

The distance term is built as a dot product over extra query/key features (below), so every
attention still goes through `mmjax.attention.attention` and any of its implementations. The
k-means assignment normalises over slots rather than over keys, which is not the attention
function's operation; it is written out here (a few einsums over [B, pixels, slots]).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import layers
from mmjax.attention import attention
from mmjax.sharding import constrain

# Subtracted from the logits of what a head must not attend to: the slot itself in a self-excluding
# head, the background (largest segment) in a geometric head. Large enough that
# softmax gives it no weight; small enough to stay finite in bfloat16.
_EXCLUDED = 1e4


def mask_geometry(attn: jax.Array, coords: jax.Array, power: float = 3.0, eps: float = 1e-6) -> jax.Array:
  """Moments of soft masks. attn [B, N, K] (each pixel's weights over K slots), coords [N, 2].

  Returns [B, K, 8]: log mass (mean weight over pixels), centroid (x, y), standard deviation along
  x and y, the x-y correlation and the skewness along x and y (a triangle's tells it from a square
  of the same spread), all of the weights attn ** power. The power keeps the diffuse
  tail out: a weight of 0.01 on each of a thousand background pixels would otherwise outweigh an
  object's twenty pixels at 0.85 and pull its centroid towards the middle of the image."""
  attn = attn**power
  mass = attn.sum(1)  # [B, K]
  w = attn / (mass[:, None, :] + eps)  # each slot's weights sum to 1 over pixels
  centroid = jnp.einsum("bnk,nc->bkc", w, coords)  # [B, K, 2]
  second = jnp.einsum("bnk,nc,nd->bkcd", w, coords, coords)  # [B, K, 2, 2]
  cov = second - centroid[..., :, None] * centroid[..., None, :]
  std = jnp.sqrt(jnp.maximum(jnp.stack([cov[..., 0, 0], cov[..., 1, 1]], -1), 0.0) + eps)
  corr = cov[..., 0, 1] / (std[..., 0] * std[..., 1])
  third = jnp.einsum("bnk,nc->bkc", w, coords**3)
  moment2 = jnp.stack([second[..., 0, 0], second[..., 1, 1]], -1)
  skew = (third - 3 * centroid * moment2 + 2 * centroid**3) / std**3
  log_mass = jnp.log(mass / attn.shape[1] + eps)
  return jnp.concatenate([log_mass[..., None], centroid, std, corr[..., None], skew], -1)


def fourier_features(x: jax.Array, num_frequencies: int) -> jax.Array:
  """[..., C] in [-1, 1] -> [..., 2 C F]: sin and cos of pi 2^f x, f < F (positions at several scales)."""
  freqs = np.pi * 2.0 ** np.arange(num_frequencies, dtype=np.float32)
  angles = (x[..., None] * freqs).reshape(*x.shape[:-1], -1)
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1)


def farthest_point_indices(x: jax.Array, k: int) -> jax.Array:
  """int32 [B, k]: indices of k rows of x [B, N, F] chosen greedily, each the farthest (squared
  Euclidean) from those already chosen; the first is the farthest from the mean. Deterministic."""

  def dist_to(i):
    return ((x - jnp.take_along_axis(x, i[:, None, None], axis=1)) ** 2).sum(-1)  # [B, N]

  first = jnp.argmax(((x - x.mean(1, keepdims=True)) ** 2).sum(-1), axis=1)
  chosen, nearest = [first], dist_to(first)
  for _ in range(k - 1):
    nxt = jnp.argmax(nearest, axis=1)
    chosen.append(nxt)
    nearest = jnp.minimum(nearest, dist_to(nxt))
  return jnp.stack(chosen, 1).astype(jnp.int32)


class KMeansSlots(nn.Module):
  """Slots by soft k-means over the pixels' grouping features.

  Pixels compete for slots (softmax over slots, as in slot attention, Locatello et al. 2020) by
  the squared distance between their grouping features and each slot's centre; a centre moves to
  the weighted mean of the pixels it wins. Each centre starts at one of the image's own pixels,
  chosen by farthest-point sampling (the deterministic k-means++ start), so every slot holds at
  least its own pixel from the first iteration on. A slot's content is the weighted mean of the
  pixels' `values` (what the slot *is*), projected to `width`.

  The grouping features are given, not learned: learned ones drifted during training until two
  objects shared a slot (README "Measured results"). The object encoder groups by colour.

  Returns (slots [B, K, width], masks [B, M, K]): each pixel's weight over the slots after the last
  update of the centres, for the M pixels of `mask_grouping` (default: the N grouping pixels).
  The encoder groups a subsample of the pixels and asks for the masks of all of them."""

  num_slots: int
  width: int
  iterations: int = 3
  sharpness: float = 20.0  # initial softmax scale per squared unit of the grouping features; learned
  mlp_dim: int = 192
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, grouping, values, mask_grouping=None):
    """grouping [B, N, G] (float32), values [B, N, F], mask_grouping [B, M, G] or None."""
    g = grouping.astype(jnp.float32)
    log_sharpness = self.param(
      "log_sharpness", layers.param_with_axes(nn.initializers.constant(np.log(self.sharpness)), ("norm",)), (1,)
    )
    sharpness = jnp.exp(log_sharpness[0])
    start = farthest_point_indices(g, self.num_slots)  # [B, K]
    centres = jnp.take_along_axis(g, start[..., None], axis=1)  # [B, K, G]

    def assign(centres, g=g):
      # |g - c|^2 = |g|^2 - 2 g.c + |c|^2; the |g|^2 term is the same for every slot and drops
      # out of the softmax (and the expansion never builds a [B, N, K, G] array).
      logits = 2.0 * jnp.einsum("bng,bkg->bnk", g, centres) - (centres**2).sum(-1)[:, None, :]
      return jax.nn.softmax(sharpness * logits, axis=-1)

    for _ in range(self.iterations):
      attn = assign(centres)
      w = attn / (attn.sum(1, keepdims=True) + 1e-6)  # weighted mean over pixels
      centres = jnp.einsum("bnk,bng->bkg", w, g)
    attn = assign(centres)
    w = attn / (attn.sum(1, keepdims=True) + 1e-6)
    v = layers.Norm(self.dtype, name="norm_values")(values)
    pooled = jnp.einsum("bnk,bnf->bkf", w.astype(self.dtype), v)  # [B, K, F]
    slots = layers.Dense(self.width, ("media_embed",), ("embed",), dtype=self.dtype, name="out")(pooled)
    slots = slots + layers.MLP(self.mlp_dim, self.dtype, name="mlp")(layers.Norm(self.dtype, name="norm_mlp")(slots))
    if mask_grouping is None:
      return slots, attn
    return slots, assign(centres, mask_grouping.astype(jnp.float32))


class GeometricSelfAttention(nn.Module):
  """Self-attention over objects whose logits add a per-head distance term.

  logit_h(i, j) = q_i.k_j / sqrt(d) - slope_h |c_i - c_j|^2 + key_bias_h(j) [- inf if i = j and h
  is self-excluding]. Dropping the term constant in j, -slope |c_i - c_j|^2 equals
  2 slope c_i.c_j - slope |c_j|^2, so the extra terms are a dot product between
  [2 slope c_i, slope, penalty * onehot(i), 1] on the query side and [c_j, -|c_j|^2, -onehot(j),
  key_bias(j)] on the key side: appended to q and k, they let the one attention function compute
  it. `key_bias` is learned from each object's features, plus mass_prior_h * log_mass_j: with
  mass_prior starting negative, heads start out preferring small segments (objects) to large ones
  (the background, whose centroid sits near the middle of the image and would otherwise be the
  "nearest object" of every object near the middle).

  The first `geometric_heads` heads score by distance alone: no content term q.k, no learned key
  bias, no mass prior (which would also prefer small objects to large ones), and they never
  attend to the largest segment of the image (the background). A near head then always reads the
  nearest other object. With content terms, the trained main job's first-layer near head had
  learned to look at the background in 40% of cases and at the true nearest object in only 53%;
  geometric heads with the mass prior in place of the exclusion still chose the background in 7%
  (README "Measured results")."""

  num_heads: int
  head_dim: int
  slopes: Sequence[float]
  self_excluding_heads: int = 2
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  mass_prior: float = -2.0
  geometric_heads: int = 0

  @nn.compact
  def __call__(self, x, centroids, log_mass):
    b, k_slots, _ = x.shape
    h, d = self.num_heads, self.head_dim
    if len(self.slopes) != h:
      raise ValueError(
        f"GeometricSelfAttention: {len(self.slopes)} slopes for {h} heads "
        "(config.model.objects.slopes needs one per head)."
      )
    proj = lambda name: layers.Dense(
      (h, d), ("embed",), ("heads", "head_dim"), use_bias=False, dtype=self.dtype, name=name
    )(x)
    if not 0 <= self.geometric_heads <= h:
      raise ValueError(
        f"GeometricSelfAttention: geometric_heads={self.geometric_heads} must be in [0, {h}] "
        "(config.model.objects.geometric_heads)."
      )
    content = (jnp.arange(h) >= self.geometric_heads).astype(self.dtype)  # [H]: 0 = geometry only
    q, k, v = proj("query") * (content[:, None] / np.sqrt(d)), proj("key"), proj("value")
    slopes = self.param(
      "slopes", layers.param_with_axes(lambda *_: jnp.asarray(self.slopes, jnp.float32), ("heads",)), (h,)
    )
    mass_prior = self.param(
      "mass_prior", layers.param_with_axes(nn.initializers.constant(self.mass_prior), ("heads",)), (h,)
    )
    learned_bias = layers.Dense(h, ("embed",), ("heads",), dtype=self.dtype, name="key_bias")(
      x
    ) + mass_prior * log_mass[..., None].astype(self.dtype)  # [B, K, H]
    largest = jax.nn.one_hot(jnp.argmax(log_mass, axis=-1), k_slots, dtype=self.dtype)  # [B, K]: the background
    key_bias = learned_bias * content + (1 - content) * (-_EXCLUDED * largest[..., None])
    c = centroids.astype(self.dtype)
    excl = (jnp.arange(h) < self.self_excluding_heads).astype(self.dtype)  # [H]
    eye = jnp.eye(k_slots, dtype=self.dtype)
    ones = jnp.ones((b, k_slots, h, 1), self.dtype)
    q_geo = jnp.concatenate(
      [
        2.0 * slopes[None, None, :, None] * c[:, :, None, :],  # x 2 slope c_i
        jnp.broadcast_to(slopes[None, None, :, None], (b, k_slots, h, 1)),  # x slope
        jnp.broadcast_to(_EXCLUDED * excl[None, None, :, None] * eye[None, :, None, :], (b, k_slots, h, k_slots)),
        ones,
      ],
      -1,
    )
    k_geo = jnp.concatenate(
      [
        jnp.broadcast_to(c[:, :, None, :], (b, k_slots, h, 2)),
        jnp.broadcast_to(-(c**2).sum(-1)[:, :, None, None], (b, k_slots, h, 1)),
        jnp.broadcast_to(-eye[None, :, None, :], (b, k_slots, h, k_slots)),
        key_bias[..., None],
      ],
      -1,
    )
    q_aug = jnp.concatenate([q, q_geo.astype(q.dtype)], -1)
    k_aug = jnp.concatenate([k, k_geo.astype(k.dtype)], -1)
    v_pad = jnp.pad(v, ((0, 0), (0, 0), (0, 0), (0, q_aug.shape[-1] - d)))  # k and v share a shape
    out = attention(q_aug, k_aug, v_pad, scale=1.0, implementation=self.implementation)[..., :d]
    out = constrain(out, ("act_batch", "act_len", "act_heads", "act_head_dim"))
    return layers.Dense(x.shape[-1], ("heads", "head_dim"), ("embed",), use_bias=False, dtype=self.dtype, name="out")(
      out
    )


class ObjectEncoder(nn.Module):
  """Images uint8 [B, H, W, 3] (or float in [0, 1]) -> object tokens [B, T, width], T =
  tokens_per_image(...): the num_slots related tokens, preceded with clean_tokens by the
  num_slots tokens from before the relation layers, and followed with neighbour_tokens by the
  num_slots nearest-pair and the num_slots furthest-pair tokens.

  num_slots should be the number of colour clusters of an image (the objects and the background):
  an image with fewer gets slots that share a cluster (and are each other's "nearest object"), one
  with more gets slots that hold two clusters."""

  num_slots: int = 7
  width: int = 96
  feature_dim: int = 32
  feature_stride: int = 2  # per-pixel features on a grid this much coarser than the image
  iterations: int = 3
  sharpness: float = 20.0
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 192
  slopes: Sequence[float] = (60.0, -30.0, 15.0, 0.0)
  self_excluding_heads: int = 2
  position_frequencies: int = 4
  mass_prior: float = -2.0  # GeometricSelfAttention.mass_prior
  geometric_heads: int = 0  # GeometricSelfAttention.geometric_heads
  # Also return every object's token from before the relation layers (num_slots more tokens, told
  # apart by a learned embedding). The relation layers add the nearest and furthest objects'
  # features to each token; questions about the object's own shape or position then read a token
  # that holds two other objects as well. With the clean copies next to them they need not.
  clean_tokens: bool = False
  # Also return, for every object, a token of it paired with its nearest other object and one
  # paired with its furthest (2 num_slots more tokens, after the others): the partner's clean token
  # plus a learned projection of the object's own, so that "what shape is the object closest to
  # the red one?" is one cross-attention read, keyed by the projection and answered by the
  # partner's token. The pairs are chosen by exact centroid distance, never the object itself or
  # the background (largest segment), like the geometric heads.
  neighbour_tokens: bool = False
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"ObjectEncoder expects images [B, H, W, 3]; got {images.shape}.")
    b, h, w, _ = images.shape
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 255.0
    x = (x * 2.0 - 1.0).astype(self.dtype)
    if h % self.feature_stride or w % self.feature_stride:
      raise ValueError(f"ObjectEncoder: image size {h}x{w} is not a multiple of feature_stride={self.feature_stride}.")
    h, w = h // self.feature_stride, w // self.feature_stride
    # Grouping by the colour of every feature_stride-th pixel (not an average over the cell: a
    # pixel on an object's edge then has the object's colour or the background's, never a mix, so
    # there are exactly as many kinds of pixel as colours).
    pixels = x[:, :: self.feature_stride, :: self.feature_stride].reshape(b, h * w, 3)
    # What the slots average is local appearance: a 3x3 convolution at the same stride, whose edge
    # and corner responses, pooled over an object, tell its shape.
    values = nn.Conv(
      self.feature_dim,
      (3, 3),
      strides=self.feature_stride,
      padding="SAME",
      dtype=self.dtype,
      kernel_init=layers.param_with_axes(nn.initializers.lecun_normal(), (None, None, "channels", "conv_out")),
      bias_init=layers.param_with_axes(nn.initializers.zeros, ("conv_out",)),
      name="appearance_conv",
    )(x)
    values = layers.Dense(self.feature_dim, ("conv_out",), ("media_embed",), dtype=self.dtype, name="appearance_mlp")(
      nn.gelu(values.reshape(b, h * w, self.feature_dim))
    )
    # The geometry is read off the masks of *all* pixels, assigned to the centres found on the
    # subsample: at full resolution an object's pixel count is exact (every circle of the shapes
    # data has the same, as has every square and every triangle), which on every second pixel
    # it is not (it depends on where the object falls on the subsampling grid). The masks cost
    # one more assignment, at [B, H W, K].
    slots, masks = KMeansSlots(
      self.num_slots, self.width, self.iterations, self.sharpness, self.mlp_dim, self.dtype, name="slots"
    )(pixels, values, x.reshape(b, -1, 3))
    coords = layers.pixel_coordinates(h * self.feature_stride, w * self.feature_stride)  # in image units
    geometry = mask_geometry(masks, jnp.asarray(coords.reshape(-1, 2)))
    centroids = geometry[..., 1:3]
    # Spreads on a log scale: an object's (about 0.07) and the background's (about 0.5) differ by
    # a factor, and shapes by a few per cent of it.
    described = jnp.concatenate(
      [
        geometry[..., :3],
        jnp.log(geometry[..., 3:5]),
        geometry[..., 5:],
        fourier_features(centroids, self.position_frequencies),
      ],
      -1,
    )
    geo = layers.Dense(self.width, ("patch",), ("embed",), dtype=self.dtype, name="geometry_embed")(
      described.astype(self.dtype)
    )
    x = layers.constrain_tokens(slots + layers.MLP(self.mlp_dim, self.dtype, name="geometry_mlp")(nn.gelu(geo)))
    clean = x
    for i in range(self.depth):
      y = layers.Norm(self.dtype, name=f"relation_{i}_norm")(x)
      x = x + GeometricSelfAttention(
        self.num_heads,
        self.width // self.num_heads,
        tuple(self.slopes),
        self.self_excluding_heads,
        self.implementation,
        self.dtype,
        self.mass_prior,
        self.geometric_heads,
        name=f"relation_{i}_attention",
      )(y, centroids, geometry[..., 0])
      y = layers.Norm(self.dtype, name=f"relation_{i}_norm_mlp")(x)
      x = layers.constrain_tokens(x + layers.MLP(self.mlp_dim, self.dtype, name=f"relation_{i}_mlp")(y))
    x = layers.Norm(self.dtype, name="norm")(x)
    if not (self.clean_tokens or self.neighbour_tokens):
      return x
    clean = layers.Norm(self.dtype, name="norm_clean")(clean)
    tokens = [x]
    if self.clean_tokens:
      kinds = self.param(
        "token_kind", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")), (2, self.width)
      ).astype(self.dtype)
      tokens = [clean + kinds[0], x + kinds[1]]
    if self.neighbour_tokens:
      tokens += self._neighbour_tokens(clean, centroids, geometry[..., 0])
    return layers.constrain_tokens(jnp.concatenate(tokens, axis=1))

  def _neighbour_tokens(self, clean, centroids, log_mass):
    """[nearest-pair tokens [B, K, width], furthest-pair tokens [B, K, width]] (neighbour_tokens)."""
    kinds = self.param(
      "neighbour_kind", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")), (2, self.width)
    ).astype(self.dtype)
    out = []
    for r, (name, other) in enumerate(zip(("nearest", "furthest"), nearest_and_furthest(centroids, log_mass))):
      partner = jnp.take_along_axis(clean, other[..., None], axis=1)  # [B, K, width]
      # The partner's clean token as it is, so reading its shape or colour is the read the decoder
      # already does for "what shape is the red object?"; the object itself enters through a
      # learned projection, which the question's "closest to the red object" is matched against.
      pair = partner + layers.Dense(self.width, ("embed",), ("mlp",), dtype=self.dtype, name=f"{name}_self")(clean)
      out.append(pair + kinds[r])
    return out


def nearest_and_furthest(centroids: jax.Array, log_mass: jax.Array) -> tuple[jax.Array, jax.Array]:
  """int [B, K] each: for every slot, the other slot with the nearest and the furthest centroid,
  never the slot itself nor the largest segment (the background). centroids [B, K, 2]."""
  k_slots = centroids.shape[1]
  d2 = ((centroids[:, :, None, :] - centroids[:, None, :, :]) ** 2).sum(-1)  # [B, K, K]
  largest = jax.nn.one_hot(jnp.argmax(log_mass, axis=-1), k_slots)  # [B, K]
  excluded = jnp.maximum(jnp.eye(k_slots)[None], largest[:, None, :]) * _EXCLUDED  # self, background
  return jnp.argmin(d2 + excluded, -1), jnp.argmax(d2 - excluded, -1)


def tokens_per_image(num_slots: int, clean_tokens: bool = False, neighbour_tokens: bool = False) -> int:
  """How many tokens ObjectEncoder returns per image."""
  return num_slots * (1 + int(clean_tokens) + 2 * int(neighbour_tokens))
