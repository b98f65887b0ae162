"""Causal transformer language model that reads a fusion Conditioning; KV cache for decoding.

Prefix-LM (early fusion, PaliGemma): a `cond.prefix` [B, P, D] is placed before the tokens. Query
positions see the whole valid prefix bidirectionally and the tokens causally; padded prefix
positions (j >= cond.prefix_len) are never attended to (segment ids: 0 for padded prefix slots,
1 elsewhere). The same mask is rebuilt over the KV cache in decode mode, so prefill + step-by-step
decoding equals the full forward.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.fusion.base import Conditioning
from mmjax.layers import prefix_segment_ids  # noqa: F401  (public here too: notebooks and tests use it)


def prepends_prefix(start) -> bool:
  """Whether a KV-cache call at `start` is the first one, which prepends the condition's prefix: `start`
  the Python int 0 (later calls may pass a traced index)."""
  return isinstance(start, int) and start == 0


class Decoder(nn.Module):
  vocab_size: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None
  mlp_dim: int = 512
  max_len: int = 128
  cross_attention_every: int = 0
  gated_cross_attention: bool = False
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES
  scan_layers: bool = False  # nn.scan over the blocks; needs identical blocks (cross_attention_every 0 or 1)
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  # The last location_bins ids of the vocabulary are location tokens (mmjax.location_tokens; the
  # model gets the count from config.data.location_bins). location_embedding: how their embeddings
  # start, "random" like every other id, or "sincos" (layers.Embed's ordinal_tail: neighbouring bins
  # start alike).
  location_bins: int = 0
  location_embedding: str = "random"
  # > 0: `xent` spreads a location target over the neighbouring bins, a Gaussian of this many bins'
  # standard deviation, so that a near miss costs less than a far one (a bin is ordered, unlike a word).
  location_label_sigma: float = 0.0
  # A block of ids whose embeddings (and so, tied, output logits) are sums of per-digit vectors
  # (layers.Embed's factored_levels): image codes of a finite scalar quantizer, one digit per code
  # dimension (mmjax.models.image_tokens sets them with config.model.factored_codes).
  factored_start: int = 0
  factored_levels: tuple[int, ...] = ()
  # Pretrained families (mmjax.pretrained): head_dim (default width // num_heads); posemb "learn"
  # (GPT-2, mmjax's own) or "none" (rotary positions instead: style rope_theta, Llama / Gemma);
  # scale_embeddings multiplies token embeddings by sqrt(width) (Gemma); tie_embeddings=False gives
  # a separate output projection `lm_head` (most Llamas); `style`: layers.STYLE_FIELDS of the blocks
  # and of the final norm.
  head_dim: int | None = None
  posemb: str = "learn"
  scale_embeddings: bool = False
  tie_embeddings: bool = True
  style: dict | None = None

  def setup(self):
    if self.location_embedding not in ("random", "sincos"):
      raise ValueError(
        f"config.model.decoder.location_embedding={self.location_embedding!r}: expected 'random' or 'sincos'."
      )
    ordinal = self.location_bins if self.location_embedding == "sincos" else 0
    if self.factored_levels and not self.tie_embeddings:
      raise ValueError(
        "config.model.factored_codes factors the decoder's tied output projection: it needs "
        "config.model.decoder.tie_embeddings=True."
      )
    self.embed = layers.Embed(
      self.vocab_size,
      self.width,
      self.dtype,
      ordinal_tail=ordinal,
      factored_start=self.factored_start,
      factored_levels=tuple(self.factored_levels),
    )
    if self.mlp_activation not in layers.MLP_ACTIVATIONS:
      raise ValueError(
        f"config.model.decoder.mlp_activation={self.mlp_activation!r}: use one of {tuple(layers.MLP_ACTIVATIONS)}."
      )
    if self.posemb not in ("learn", "none"):
      raise ValueError(f"config.model.decoder.posemb={self.posemb!r}: expected 'learn' or 'none'.")
    if self.posemb == "learn":
      self.pos_table = self.param(
        "posemb",
        layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
        (self.max_len, self.width),
        jnp.float32,
      )
    if not self.tie_embeddings:
      self.lm_head = layers.Dense(self.vocab_size, ("embed",), ("vocab",), use_bias=False, dtype=self.dtype)
    style = layers.block_style(self.style, "config.model.decoder")
    every = self.cross_attention_every
    block = lambda i: dict(
      **style,
      num_heads=self.num_heads,
      head_dim=self.head_dim or self.width // self.num_heads,
      mlp_dim=self.mlp_dim,
      num_kv_heads=self.num_kv_heads,
      cross_attention=bool(every) and (i + 1) % every == 0,
      gated_cross_attention=self.gated_cross_attention,
      implementation=self.implementation,
      dtype=self.dtype,
      mlp_activation=self.mlp_activation,
    )
    if self.scan_layers:
      if len({tuple(sorted(block(i).items())) for i in range(self.depth)}) > 1:
        raise ValueError(
          f"Decoder: scan_layers needs identical layers; cross_attention_every={every} makes "
          "them differ. Use cross_attention_every 0 or 1, or model.scan_layers=False."
        )
      self.blocks = layers.ScannedBlocks(self.depth, block(0), self.remat)
    else:
      cls = layers.block_class(self.remat)
      self.blocks = [cls(**block(i)) for i in range(self.depth)]
    self.norm = layers.Norm(self.dtype, style.get("norm", "layernorm"), style.get("norm_eps", 1e-6))

  def xent(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-token cross-entropy [...] of logits [..., V] against integer labels [...]: against the
    label alone, or for a location label with location_label_sigma > 0 against a Gaussian over the
    location bins centred on it (cut at the image border and renormalised)."""
    if not (self.location_label_sigma > 0 and self.location_bins):
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    n = self.location_bins
    first = logits.shape[-1] - n  # location ids are the vocabulary's last ids
    offset = jnp.arange(n) - (labels - first)[..., None]
    spread = jax.nn.softmax(-0.5 * (offset / self.location_label_sigma) ** 2, axis=-1)
    target_logit = jnp.where(
      labels >= first,
      jnp.einsum("...n,...n->...", spread, logits[..., first:]),
      jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0],
    )
    return jax.nn.logsumexp(logits, axis=-1) - target_logit

  def __call__(
    self,
    tokens,
    cond: Conditioning,
    start: jax.Array | int = 0,
    decode: bool = False,
    bidirectional=None,
    output: str = "logits",
    positions=None,
  ):
    """tokens int32 [B, T] -> logits float32 [B, T, V] for the tokens (prefix positions dropped).

    tokens may also be input embeddings, float [B, T, width], for inputs that are not ids of the
    vocabulary (mmjax.models.pixel_tokens: a patch of pixel colours embedded as one position), and
    output="hidden" returns the final normed states [B, T, width] instead of the logits, for a model
    that reads them with its own head.

    Training: start=0, decode=False; a `cond.prefix` is prepended and attended bidirectionally
    (its padding, past `cond.prefix_len`, is masked out). `bidirectional` int32 [B] (training-mode
    forwards only): the first that many tokens are read bidirectionally too, as if part of the
    prefix (MaskGIT's image block, mmjax.models.image_tokens); the rest stay causal.
    Decoding: decode=True; the first call (prefill: `start` the Python int 0) passes the prefix (if
    any) followed by `tokens` (which may be empty, [B, 0]); later calls pass tokens with `start` =
    their position (prefix included, i.e. the first answer token sits at P = cond.prefix.shape[1]).

    positions: the blocks' rotary positions (style rope_theta > 0) for this call's sequence, prefix
    included where it is prepended: int [B or 1, S] or, over several axes, [B or 1, S, A]
    (layers.axial_rope); None: the sequence index. They replace the index in rotary positions only:
    the learnt position table (posemb "learn") still reads the sequence index.
    """
    if output not in ("logits", "hidden"):
      raise ValueError(f"Decoder: output={output!r}: expected 'logits' or 'hidden'.")
    if jnp.issubdtype(tokens.dtype, jnp.floating):
      x = tokens.astype(self.dtype)
    else:
      x = self.embed(tokens)
      if self.scale_embeddings:
        x = x * jnp.asarray(self.width**0.5, x.dtype)
    n_prefix = 0 if cond.prefix is None else cond.prefix.shape[1]
    prepend = n_prefix and (not decode or prepends_prefix(start))
    if prepend:
      x = jnp.concatenate([cond.prefix.astype(x.dtype), x], axis=1)
    if isinstance(start, int) and start + x.shape[1] > self.max_len:
      raise ValueError(f"Decoder: {start + x.shape[1]} positions exceed max_len={self.max_len}.")
    if self.posemb == "learn":
      index = start + jnp.arange(x.shape[1])
      x = x + jnp.take(self.pos_table, index, axis=0)[None].astype(x.dtype)
    x = layers.constrain_tokens(x)
    prefix_len = None
    if n_prefix:
      prefix_len = (
        jnp.full((x.shape[0],), n_prefix, jnp.int32) if cond.prefix_len is None else cond.prefix_len.astype(jnp.int32)
      )
    if decode and bidirectional is not None:
      raise ValueError("Decoder: `bidirectional` is for training-mode forwards; the KV cache decodes causally.")
    if decode:
      self_mask = None  # the cache builds its own causal mask (offset = cache index) + prefix terms
    elif n_prefix:
      seg = prefix_segment_ids(jnp.arange(x.shape[1]), prefix_len, n_prefix)
      # The padded prefix slots are excluded by the segments, so the bidirectional span may cover them.
      span = prefix_len if bidirectional is None else n_prefix + bidirectional.astype(jnp.int32)
      self_mask = MaskSpec(causal=True, prefix_len=span, q_segment_ids=seg, kv_segment_ids=seg)
    elif bidirectional is not None:
      self_mask = MaskSpec(causal=True, prefix_len=bidirectional.astype(jnp.int32))
    else:
      self_mask = MaskSpec(causal=True)
    prefix = (prefix_len, n_prefix) if n_prefix else None
    memory_mask = None if cond.memory_len is None else MaskSpec(kv_valid_len=cond.memory_len)
    if positions is not None and not layers.block_style(self.style, "config.model.decoder").get("rope_theta"):
      raise ValueError("Decoder: `positions` are rotary positions; config.model.decoder.style.rope_theta is 0.")
    if positions is not None and positions.shape[-2 if positions.ndim == 3 else -1] != x.shape[1]:
      raise ValueError(f"Decoder: positions {positions.shape} for a sequence of {x.shape[1]}.")
    if self.scan_layers:
      x = self.blocks(x, self_mask, cond.memory, memory_mask, decode, prefix, positions)
    else:
      for block in self.blocks:  # positional: nn.remat's static_argnums counts positions (decode = 5)
        x = block(x, self_mask, cond.memory, memory_mask, decode, prefix, positions)
    x = self.norm(x)[:, n_prefix if prepend else 0 :]
    if output == "hidden":
      return x
    logits = self.embed.attend(x) if self.tie_embeddings else self.lm_head(x)
    return logits.astype(jnp.float32)
