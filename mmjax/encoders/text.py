"""Bidirectional transformer text encoder for prompts and questions: tokens -> [B, L, D]."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec


class TextEncoder(nn.Module):
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
    x = layers.constrain_tokens(x + pos[None, : tokens.shape[1]].astype(x.dtype))
    mask = MaskSpec(kv_valid_len=lengths.astype(jnp.int32))
    block = dict(
      num_heads=self.num_heads,
      head_dim=self.width // self.num_heads,
      mlp_dim=self.mlp_dim,
      implementation=self.implementation,
      dtype=self.dtype,
    )
    x = layers.run_blocks(x, depth=self.depth, block=block, remat=self.remat, scan=self.scan_layers, self_mask=mask)
    return layers.LayerNorm(self.dtype, name="norm")(x)
