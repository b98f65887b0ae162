"""Cross-attention fusion: decoder layers attend to image and question tokens.

The memory is [image tokens ; question tokens], each projected to the decoder width with a learned
modality embedding. `fuse_depth` > 0 adds bidirectional transformer layers over that memory before
the decoder reads it, so image patches can be read in the light of the question (the decoder's
cross-attention alone sees them only through its own few queries). `gated=True` multiplies each
cross-attention by tanh(g) with g initialised at 0 (Flamingo), so the decoder starts as a pure LM.

`text_as="prefix"` keeps the question out of the memory and places its tokens at the head of the
decoder's own sequence instead (a bidirectional prefix, as in prefix-LM): every question word then
reads the image through the decoder's cross-attention, the same path caption words use, so what
captioning teaches about finding an object by its words serves the questions too.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.fusion.base import Conditioning, Fusion
from mmjax.fusion.prefix_lm import project_sources


class CrossAttentionFusion(Fusion):
  cross_attention_every: int = 1
  gated: bool = False
  text_as: str = "memory"  # "memory": question tokens join the memory; "prefix": they lead the decoder
  fuse_depth: int = 0
  num_heads: int = 4
  mlp_dim: int = 512
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  remat: str = "none"  # layers.REMAT_POLICIES
  scan_layers: bool = False  # nn.scan over the fuse blocks

  def shares_media_across_prompts(self) -> bool:
    # With the question in the decoder's prefix the memory is the image alone (see Fusion).
    return self.text_as == "prefix"

  @nn.compact
  def __call__(self, media, text=None):
    if self.text_as not in ("memory", "prefix"):
      raise ValueError(f"cross_attention: text_as={self.text_as!r}; use 'memory' or 'prefix'.")
    prefix = prefix_len = None
    if text is not None and self.text_as == "prefix":
      # The question leads the decoder's own sequence (bidirectional prefix): each question word
      # then reads the image through the decoder's cross-attention, as caption words do.
      tokens, prefix_len = text
      prefix = layers.Dense(self.width, ("media_embed",), ("embed",), dtype=self.dtype, name="proj_text")(tokens)
      text = None
    memory, memory_len = project_sources(self, media, text, self.width, self.dtype)
    if self.fuse_depth:
      mask = MaskSpec(kv_valid_len=memory_len)
      block = dict(
        num_heads=self.num_heads,
        head_dim=self.width // self.num_heads,
        mlp_dim=self.mlp_dim,
        implementation=self.implementation,
        dtype=self.dtype,
      )
      memory = layers.run_blocks(
        memory,
        depth=self.fuse_depth,
        block=block,
        remat=self.remat,
        scan=self.scan_layers,
        prefix="fuse",
        self_mask=mask,
      )
      memory = layers.Norm(self.dtype, name="fuse_norm")(memory)
    return Conditioning(memory=memory, memory_len=memory_len, prefix=prefix, prefix_len=prefix_len)
