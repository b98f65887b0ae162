"""Flamingo fusion: a Perceiver resampler per modality + gated cross-attention in the decoder.

Media tokens are resampled to `num_latents` learned latents (each resampler layer: the latents
cross-attend to [media ; latents], then an MLP), projected to the decoder width and handed to the
decoder as `memory`; every `cross_attention_every`-th decoder layer cross-attends to it through a
tanh gate initialised at 0 (the decoder starts as a pure LM). The prompt's text-encoder tokens go in
as a decoder `prefix` (`prompt_as="prefix"`, Flamingo reads text in the LM stream) or are appended
to the memory (`prompt_as="memory"`).

`most_recent_image_mask` builds Flamingo's interleaved-sequence mask (each text token sees only the
latents of the most recent image before it) as a MaskSpec with segment ids.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import layers
from mmjax.attention import MaskSpec
from mmjax.fusion.base import Conditioning, Fusion
from mmjax.fusion.prefix_lm import project_sources


class PerceiverResampler(nn.Module):
  """[B, N, D] media tokens -> [B, num_latents, D] (Flamingo, Alayrac et al. 2022, Sec. 2.1)."""

  num_latents: int = 16
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, lengths=None):
    b, n, d = tokens.shape
    latents = self.param(
      "latents",
      layers.param_with_axes(nn.initializers.normal(0.02), ("pos", "embed")),
      (self.num_latents, d),
      jnp.float32,
    )
    x = jnp.broadcast_to(latents.astype(self.dtype)[None], (b, self.num_latents, d))
    media = layers.Norm(self.dtype, name="norm_media")(tokens.astype(self.dtype))
    # Keys are [media ; latents]; padded media keys are masked with segment ids (media then latents).
    mask = None
    if lengths is not None:
      kv_seg = jnp.concatenate(
        [jnp.where(jnp.arange(n)[None] < lengths[:, None], 1, 0), jnp.ones((b, self.num_latents), jnp.int32)], axis=1
      ).astype(jnp.int32)
      mask = MaskSpec(q_segment_ids=jnp.ones((b, self.num_latents), jnp.int32), kv_segment_ids=kv_seg)
    for i in range(self.depth):
      q = layers.Norm(self.dtype, name=f"norm_latents_{i}")(x)
      x = x + layers.MultiHeadAttention(
        self.num_heads, d // self.num_heads, implementation=self.implementation, dtype=self.dtype, name=f"attention_{i}"
      )(q, kv=jnp.concatenate([media, q], axis=1), mask=mask)
      x = layers.constrain_tokens(x)
      x = x + layers.MLP(self.mlp_dim, self.dtype, name=f"mlp_{i}")(layers.Norm(self.dtype, name=f"norm_mlp_{i}")(x))
      x = layers.constrain_tokens(x)
    return layers.Norm(self.dtype, name="norm")(x)


class FlamingoFusion(Fusion):
  cross_attention_every: int = 1
  gated: bool = True
  num_latents: int = 16
  resampler_depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  prompt_as: str = "prefix"  # "prefix" | "memory"
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @classmethod
  def masks_padded_media(cls, modality, modalities) -> bool:
    return True  # each modality's resampler masks its own padded tokens

  @nn.compact
  def __call__(self, media, text=None):
    if not self.cross_attention_every:
      raise ValueError("flamingo fusion reads media through cross-attention: cross_attention_every must be > 0.")
    if self.prompt_as not in ("prefix", "memory"):
      raise ValueError(f"flamingo: prompt_as={self.prompt_as!r}; use 'prefix' or 'memory'.")
    resampled = {}
    for name, (tokens, lengths) in sorted(media.items()):
      r = PerceiverResampler(
        self.num_latents,
        self.resampler_depth,
        self.num_heads,
        self.mlp_dim,
        self.implementation,
        self.dtype,
        name=f"resampler_{name}",
      )(tokens, lengths)
      resampled[name] = (r, None)
    if self.prompt_as == "memory":
      memory, memory_len = project_sources(self, resampled, text, self.width, self.dtype)
      return Conditioning(memory=memory, memory_len=memory_len)
    memory, _ = project_sources(self, resampled, None, self.width, self.dtype)
    if text is None:
      return Conditioning(memory=memory)
    prefix, prefix_len = project_sources(self, {}, text, self.width, self.dtype)
    return Conditioning(prefix=prefix, prefix_len=prefix_len, memory=memory)


def most_recent_image_mask(image_marker: jax.Array, num_images: int, latents_per_image: int) -> MaskSpec:
  """Cross-attention mask for interleaved image-text sequences (Flamingo's "most recent image").

  image_marker: bool/int [B, T], true at the text position where image k (k = 0, 1, ... in order)
    appears (its <image> token). Key j of the memory [B, num_images * latents_per_image] belongs to
    image j // latents_per_image. Text position t attends only to the latents of the last image
    whose marker is at or before t; positions before the first image attend to nothing (output 0,
    and the gated residual leaves them unchanged).
  """
  image_marker = jnp.asarray(image_marker).astype(jnp.int32)
  b = image_marker.shape[0]
  q_seg = jnp.cumsum(image_marker, axis=1)  # 0 before any image, k + 1 after image k
  kv_seg = jnp.broadcast_to(
    jnp.repeat(jnp.arange(1, num_images + 1, dtype=jnp.int32), latents_per_image)[None],
    (b, num_images * latents_per_image),
  )
  return MaskSpec(q_segment_ids=q_seg.astype(jnp.int32), kv_segment_ids=kv_seg)
