"""Causal transformer language model that reads a fusion Conditioning; KV cache for decoding."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.fusion.base import Conditioning


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

  def setup(self):
    self.embed = layers.Embed(self.vocab_size, self.width, self.dtype)
    self.posemb = self.param("posemb", layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
                             (self.max_len, self.width), jnp.float32)
    every = self.cross_attention_every
    self.blocks = [
        layers.TransformerBlock(self.num_heads, self.width // self.num_heads, self.mlp_dim, self.num_kv_heads,
                                cross_attention=bool(every) and (i + 1) % every == 0,
                                gated_cross_attention=self.gated_cross_attention,
                                implementation=self.implementation, dtype=self.dtype)
        for i in range(self.depth)]
    self.norm = layers.LayerNorm(self.dtype)

  def __call__(self, tokens, cond: Conditioning, start: jax.Array | int = 0, decode: bool = False):
    """tokens int32 [B, T] -> logits float32 [B, T, V] for the tokens (prefix positions dropped).

    Training: start=0, decode=False; a `cond.prefix` is prepended and attended bidirectionally.
    Decoding: decode=True; the first call (prefill) passes the prefix (if any) and start=0, later
    calls pass one token each with `start` = its position (prefix included).
    """
    x = self.embed(tokens)
    n_prefix = 0
    if cond.prefix is not None and not (decode and not isinstance(start, int)):
      x = jnp.concatenate([cond.prefix.astype(x.dtype), x], axis=1)
      n_prefix = cond.prefix.shape[1]
    if isinstance(start, int) and start + x.shape[1] > self.max_len:
      raise ValueError(f"Decoder: {start + x.shape[1]} positions exceed max_len={self.max_len}.")
    positions = start + jnp.arange(x.shape[1])
    x = layers.constrain_tokens(x + jnp.take(self.posemb, positions, axis=0)[None].astype(x.dtype))
    if decode:
      self_mask = None  # the cache builds its own causal mask (offset = cache index)
    elif n_prefix:
      self_mask = MaskSpec(causal=True, prefix_len=cond.prefix_len)
    else:
      self_mask = MaskSpec(causal=True)
    memory_mask = None if cond.memory_len is None else MaskSpec(kv_valid_len=cond.memory_len)
    for block in self.blocks:
      x = block(x, self_mask=self_mask, memory=cond.memory, memory_mask=memory_mask, decode=decode)
    x = self.norm(x)[:, n_prefix:]
    return self.embed.attend(x).astype(jnp.float32)
