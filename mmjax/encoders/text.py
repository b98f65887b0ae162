"""Bidirectional transformer text encoder for prompts and questions: tokens -> [B, L, D]."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec


class TextEncoder(nn.Module):
  """Token + learned position embeddings, transformer blocks, final norm.

  Pretrained towers (mmjax.pretrained) set the rest: causal (CLIP's text tower attends causally),
  type_embedding (BERT's segment-0 embedding, added to every token), embed_norm (BERT's norm after
  the embeddings), final_norm (False for BERT, whose post-norm blocks end normalised), head_dim,
  mlp_activation and the block `style` (layers.STYLE_FIELDS).
  """

  vocab_size: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  max_len: int = 64
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES
  scan_layers: bool = False  # nn.scan over the blocks (parameters stacked on a "layers" axis)
  head_dim: int | None = None  # default width // num_heads
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  style: dict | None = None  # layers.STYLE_FIELDS
  causal: bool = False
  type_embedding: bool = False
  type_vocab_size: int = 1  # rows of BERT's segment table (kept whole for export); every token takes row 0
  embed_norm: bool = False
  final_norm: bool = True

  @nn.compact
  def __call__(self, tokens, lengths):
    """tokens int32 [B, L] (0-padded), lengths int32 [B]. Padded positions are never attended to."""
    if tokens.shape[1] > self.max_len:
      raise ValueError(f"TextEncoder: {tokens.shape[1]} tokens exceed max_len={self.max_len}.")
    x = layers.Embed(self.vocab_size, self.width, self.dtype, name="embed")(tokens)
    pos = self.param(
      "posemb",
      layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
      (self.max_len, self.width),
      jnp.float32,
    )
    x = x + pos[None, : tokens.shape[1]].astype(x.dtype)
    if self.type_embedding:
      typ = self.param(
        "type_embed",
        layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")),
        (self.type_vocab_size, self.width),
      )
      x = x + typ[0].astype(x.dtype)
    style = layers.block_style(self.style, "config.model.text")
    norm = lambda name: layers.Norm(self.dtype, style.get("norm", "layernorm"), style.get("norm_eps", 1e-6), name=name)
    if self.embed_norm:
      x = norm("embed_norm")(x)
    x = layers.constrain_tokens(x)
    mask = MaskSpec(causal=self.causal, kv_valid_len=lengths.astype(jnp.int32))
    block = dict(
      num_heads=self.num_heads,
      head_dim=self.head_dim or self.width // self.num_heads,
      mlp_dim=self.mlp_dim,
      implementation=self.implementation,
      dtype=self.dtype,
      mlp_activation=self.mlp_activation,
      **style,
    )
    x = layers.run_blocks(x, depth=self.depth, block=block, remat=self.remat, scan=self.scan_layers, self_mask=mask)
    return norm("norm")(x) if self.final_norm else x
