"""Diffusion Transformer (DiT, Peebles & Xie 2023) over image patches, conditioned on text.

    v = DiT(...)(x_t, t, text, text_len)      # x_t [B, H, W, C], t [B] in [0, 1] -> v [B, H, W, C]

The network predicts the flow-matching velocity (mmjax.models.flow_matching). Its pieces:

  patches   [B, H, W, C] -> [B, (H/p)(W/p), p*p*C] -> Dense -> tokens [B, N, D], plus learned or fixed
            2-D sin-cos positions.
  c         the conditioning vector [B, D]: a sinusoidal code of t through a two-layer MLP, plus the
            mean of the valid text tokens through a Dense (the pooled text).
  adaLN-Zero every block norms its input and shifts / scales it by (shift, scale) computed from c, and
            multiplies each branch by a gate computed from c; the Dense that computes them starts at
            zero, so every block starts as the identity and the network can be trained deep from
            step 0. The final layer (adaLN + a zero-initialised Dense to patch pixels) makes the
            whole network output 0 at init: the velocity of the mean prediction.

Text conditioning (`conditioning`):
  "cross_attention"  each block self-attends over the image tokens, then cross-attends to the text
                     tokens [B, L, D] (keys beyond text_len masked), then runs its MLP.
  "joint"            MMDiT (Esser et al. 2024, SD3): the text tokens form a second stream with its
                     own norms, modulations, q/k/v/out projections and MLP; the two streams meet in
                     one self-attention over [image tokens; text tokens] whose keys beyond
                     N + text_len (the padded text) are masked.

In both modes a padded text token is never attended and never enters the pool, so its content
cannot change the output. text_len 0 is the null condition of classifier-free guidance: no text
token is seen (a cross-attention row with no key outputs 0) and the pool is 0.
"""

from __future__ import annotations

import math

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec, attention
from mmjax.sharding import constrain

CONDITIONINGS = ("cross_attention", "joint")
zeros = nn.initializers.zeros


def timestep_embedding(t: jax.Array, dim: int, scale: float = 1000.0, max_period: float = 10_000.0) -> jax.Array:
  """[B] times -> [B, dim] float32 sin-cos codes of scale * t with periods from 2 pi to max_period.

  scale 1000 spreads t in [0, 1] over the range of the discrete DDPM steps the frequencies were
  designed for, so the low-frequency channels still separate nearby times."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angle = (scale * t.astype(jnp.float32))[:, None] * freqs[None]
  code = jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)
  return jnp.pad(code, ((0, 0), (0, dim - 2 * half)))


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """x [B, S, D] * (1 + scale) + shift with [B, D] shift / scale: (0, 0) is the identity."""
  return x * (1.0 + scale[:, None]) + shift[:, None]


def masked_mean(x: jax.Array, valid: jax.Array) -> jax.Array:
  """[B, L, D] mean over the positions where valid [B, L]; 0 for a row with none. `where`, not a
  product, so that a non-finite padded value cannot leak in (0 * inf is NaN)."""
  n = valid.sum(-1, keepdims=True).astype(jnp.float32)
  total = jnp.where(valid[..., None], x.astype(jnp.float32), 0.0).sum(1)
  return total / jnp.maximum(n, 1.0)


class Modulation(nn.Module):
  """silu(c) [B, D] -> `n` [B, width] vectors (shifts, scales, gates) from one zero-initialised Dense:
  every shift, scale and gate is exactly 0 at init (adaLN-Zero)."""

  n: int
  width: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, c):
    y = layers.Dense((self.n, self.width), ("embed",), (None, "mlp"), dtype=self.dtype, kernel_init=zeros, name="ada")(
      nn.silu(c)
    )
    y = constrain(y, ("act_batch", None, "act_embed"))
    return tuple(y[:, i] for i in range(self.n))


class CrossAttentionBlock(nn.Module):
  """adaLN-Zero block: self-attention, cross-attention to the text tokens, MLP; each branch has its
  own (shift, scale, gate)."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  mlp_activation: str = "gelu"
  norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, c, text, text_mask: MaskSpec):
    norm = lambda name: layers.Norm(self.dtype, "layernorm", self.norm_eps, name=name)
    attn = lambda name: layers.MultiHeadAttention(
      self.num_heads, self.head_dim, implementation=self.implementation, dtype=self.dtype, name=name
    )
    m = Modulation(9, x.shape[-1], self.dtype, name="modulation")(c)
    h = modulate(norm("norm_self")(x), m[0], m[1])
    x = layers.constrain_tokens(x + m[2][:, None] * attn("self_attention")(h))
    h = modulate(norm("norm_cross")(x), m[3], m[4])
    x = layers.constrain_tokens(x + m[5][:, None] * attn("cross_attention")(h, kv=text, mask=text_mask))
    h = modulate(norm("norm_mlp")(x), m[6], m[7])
    mlp = layers.MLP(self.mlp_dim, self.dtype, self.mlp_activation, name="mlp")
    return layers.constrain_tokens(x + m[8][:, None] * mlp(h))


class JointBlock(nn.Module):
  """MMDiT block: image and text streams with separate norms, modulations, projections and MLPs, and
  one attention over [image; text] in which keys at or beyond `valid_len` (= N + text_len: the
  padded text) are masked.

  update_text=False (the last block, SD3's "context_pre_only"): the text stream only supplies keys
  and values, since nothing reads its tokens afterwards; it then has no out projection or MLP, whose
  parameters would never get a gradient."""

  num_heads: int
  head_dim: int
  mlp_dim: int
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  mlp_activation: str = "gelu"
  norm_eps: float = 1e-6
  update_text: bool = True

  @nn.compact
  def __call__(self, x, ctx, c, valid_len):
    n = x.shape[1]
    norm = lambda name: layers.Norm(self.dtype, "layernorm", self.norm_eps, name=name)
    heads = ("heads", "head_dim")
    streams = {"image": x, "text": ctx}
    mods, qkv = {}, {}
    for s, tokens in streams.items():
      n_mod = 6 if s == "image" or self.update_text else 2
      m = mods[s] = Modulation(n_mod, tokens.shape[-1], self.dtype, name=f"{s}_modulation")(c)
      h = modulate(norm(f"{s}_norm_attn")(tokens), m[0], m[1])
      # Text queries only when the text stream is updated: otherwise nothing would read their output.
      names = ("query", "key", "value") if s == "image" or self.update_text else ("key", "value")
      qkv[s] = {
        p: layers.Dense(
          (self.num_heads, self.head_dim), ("embed",), heads, use_bias=False, dtype=self.dtype, name=f"{s}_{p}"
        )(h)
        for p in names
      }
    # One attention over both streams with per-stream projections, which layers.MultiHeadAttention
    # (one set of projections) cannot express: the projections are Dense layers here and the
    # attention itself is still mmjax.attention.attention.
    q, k, v = (jnp.concatenate([qkv[s][p] for s in streams if p in qkv[s]], axis=1) for p in ("query", "key", "value"))
    act = ("act_batch", "act_len", "act_heads", "act_head_dim")
    q, k, v = (constrain(a, act) for a in (q, k, v))
    out = constrain(attention(q, k, v, mask=MaskSpec(kv_valid_len=valid_len), implementation=self.implementation), act)
    outs = {"image": out[:, :n], "text": out[:, n:]}
    result = []
    for s, tokens in streams.items():
      if s == "text" and not self.update_text:
        result.append(tokens)
        continue
      m = mods[s]
      proj = layers.Dense(tokens.shape[-1], heads, ("embed",), use_bias=False, dtype=self.dtype, name=f"{s}_out")
      tokens = layers.constrain_tokens(tokens + m[2][:, None] * proj(outs[s]))
      h = modulate(norm(f"{s}_norm_mlp")(tokens), m[3], m[4])
      mlp = layers.MLP(self.mlp_dim, self.dtype, self.mlp_activation, name=f"{s}_mlp")
      result.append(layers.constrain_tokens(tokens + m[5][:, None] * mlp(h)))
    return tuple(result)


class DiT(nn.Module):
  """Velocity network v(x_t, t | text) over [B, H, W, C] images (pixels or latents, any C).

  text: [B, L, D_t] float token features (a text encoder's output); text_len: int [B] valid tokens
  per row (None: all L). The image size must be a multiple of patch_size; posemb="learn" fixes the
  token grid to the one seen at init, "sincos2d" follows the input.
  """

  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_dim: int = 512
  patch_size: int = 2
  posemb: str = "sincos2d"  # "learn" | "sincos2d"
  conditioning: str = "cross_attention"  # CONDITIONINGS
  head_dim: int | None = None  # default width // num_heads
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  time_dim: int = 256  # width of the sinusoidal timestep code
  time_scale: float = 1000.0
  norm_eps: float = 1e-6
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, text, text_len=None):
    if x.ndim != 4:
      raise ValueError(f"DiT expects images [B, H, W, C]; got {x.shape}.")
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f"DiT: conditioning={self.conditioning!r}; use one of {CONDITIONINGS}.")
    b, h, w, ch = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"DiT: image size {h}x{w} is not a multiple of patch_size={p}.")
    gh, gw = h // p, w // p
    d = self.width
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    text_len = jnp.full((b,), text.shape[1], jnp.int32) if text_len is None else text_len.astype(jnp.int32)
    valid = jnp.arange(text.shape[1])[None] < text_len[:, None]

    patches = einops.rearrange(x, "b (gh p) (gw q) c -> b (gh gw) (p q c)", p=p, q=p)
    patches = constrain(patches, ("act_batch", "act_len", None))
    tokens = layers.Dense(d, ("patch",), ("embed",), dtype=self.dtype, name="patch_embed")(patches)
    if self.posemb == "learn":
      pos = self.param(
        "posemb", layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")), (gh * gw, d), jnp.float32
      )
    elif self.posemb == "sincos2d":
      pos = jnp.asarray(layers.sincos_2d(gh, gw, d))
    else:
      raise ValueError(f"DiT: unknown posemb {self.posemb!r}; use 'learn' or 'sincos2d'.")
    tokens = layers.constrain_tokens(tokens + pos.astype(tokens.dtype)[None])

    # Conditioning vector: time MLP (as DiT: Dense, SiLU, Dense) plus the pooled valid text.
    temb = timestep_embedding(t, self.time_dim, self.time_scale)
    temb = layers.Dense(d, ("channels",), ("mlp",), dtype=self.dtype, name="time_in")(temb)
    temb = layers.Dense(d, ("mlp",), ("embed",), dtype=self.dtype, name="time_out")(nn.silu(temb))
    pooled = layers.Dense(d, ("media_embed",), ("embed",), dtype=self.dtype, name="pooled_proj")(
      masked_mean(text, valid).astype(self.dtype)
    )
    c = constrain(temb + pooled, ("act_batch", "act_embed"))

    ctx = layers.Dense(d, ("media_embed",), ("embed",), dtype=self.dtype, name="text_proj")(text)
    ctx = layers.constrain_tokens(layers.Norm(self.dtype, "layernorm", self.norm_eps, name="text_norm")(ctx))
    block = dict(
      num_heads=self.num_heads,
      head_dim=self.head_dim or d // self.num_heads,
      mlp_dim=self.mlp_dim,
      implementation=self.implementation,
      dtype=self.dtype,
      mlp_activation=self.mlp_activation,
      norm_eps=self.norm_eps,
    )
    if self.conditioning == "cross_attention":
      text_mask = MaskSpec(kv_valid_len=text_len)
      for i in range(self.depth):
        tokens = CrossAttentionBlock(**block, name=f"block_{i}")(tokens, c, ctx, text_mask)
    else:
      valid_len = gh * gw + text_len
      for i in range(self.depth):
        last = i == self.depth - 1
        tokens, ctx = JointBlock(**block, update_text=not last, name=f"block_{i}")(tokens, ctx, c, valid_len)

    shift, scale = Modulation(2, d, self.dtype, name="final_modulation")(c)
    y = modulate(layers.Norm(self.dtype, "layernorm", self.norm_eps, name="final_norm")(tokens), shift, scale)
    y = layers.Dense(p * p * ch, ("embed",), ("patch",), dtype=self.dtype, kernel_init=zeros, name="final")(y)
    y = einops.rearrange(y, "b (gh gw) (p q c) -> b (gh p) (gw q) c", gh=gh, gw=gw, p=p, q=p)
    return constrain(y.astype(jnp.float32), ("act_batch", None, None, None))
