"""Q-Former fusion (BLIP-2): learned queries read the media and hand the decoder a fixed-size summary.

`num_queries` learned query tokens pass through `depth` blocks, each with self-attention among the
queries, cross-attention to the (projected) media tokens and an MLP. The resulting queries, then
the prompt's text-encoder tokens, are projected to the decoder width and fed to the decoder either
as a `prefix` (`output="prefix"`, BLIP-2 with a decoder-only LM; set cross_attention_every=0) or as
cross-attention `memory` (`output="memory"`; cross_attention_every >= 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.fusion.base import Conditioning, Fusion
from mmjax.fusion.prefix_lm import project_sources


class QFormerFusion(Fusion):
  cross_attention_every: int = 0
  gated: bool = False
  output: str = "prefix"  # "prefix" | "memory"
  num_queries: int = 16
  qformer_width: int = 0  # 0 = the decoder width
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @classmethod
  def masks_padded_media(cls, modality, modalities) -> bool:
    # The media form one memory [sorted modalities] whose valid length masks the queries'
    # cross-attention: only the last (alphabetically) modality may be padded.
    return modality == sorted(modalities)[-1]

  @nn.compact
  def __call__(self, media, text=None):
    if self.output not in ("prefix", "memory"):
      raise ValueError(f"qformer: output={self.output!r}; use 'prefix' or 'memory'.")
    if (self.output == "memory") != bool(self.cross_attention_every):
      raise ValueError(
        f"qformer: output={self.output!r} needs cross_attention_every "
        f"{'>= 1' if self.output == 'memory' else '= 0'}; got {self.cross_attention_every}."
      )
    width = self.qformer_width or self.width
    # All media modalities form one memory for the queries (only the last may be padded).
    mem, mem_len = project_sources(self, media, None, width, self.dtype)
    b = mem.shape[0]
    queries = self.param(
      "queries",
      layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
      (self.num_queries, width),
      jnp.float32,
    )
    x = layers.constrain_tokens(jnp.broadcast_to(queries.astype(self.dtype)[None], (b, self.num_queries, width)))
    mem_mask = MaskSpec(kv_valid_len=mem_len)
    for i in range(self.depth):
      x = layers.TransformerBlock(
        self.num_heads,
        width // self.num_heads,
        self.mlp_dim,
        cross_attention=True,
        implementation=self.implementation,
        dtype=self.dtype,
        name=f"block_{i}",
      )(x, memory=mem, memory_mask=mem_mask)
    x = layers.Norm(self.dtype, name="norm")(x)
    out, out_len = project_sources(self, {"queries": (x, None)}, text, self.width, self.dtype)
    if self.output == "prefix":
      return Conditioning(prefix=out, prefix_len=out_len)
    return Conditioning(memory=out, memory_len=out_len)
