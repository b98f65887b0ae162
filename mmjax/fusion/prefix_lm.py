"""Prefix-LM early fusion (PaliGemma): media and prompt tokens become the decoder's input prefix.

Every source (each media modality, then the prompt's text-encoder tokens) is projected to the
decoder width with a learned type embedding and concatenated into `prefix` [B, P, D]. The decoder
attends to the valid prefix bidirectionally and to its own tokens causally; only the last source
(the prompt) may be padded, so the valid prefix is contiguous and `prefix_len` = P - padding. The
decoder masks the padded prefix slots out (see decoders/lm.py), in training and with the KV cache.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.fusion.base import Conditioning, Fusion


def project_sources(module: nn.Module, media, text, width: int, dtype):
  """[(name, tokens [B, N, D_m], lengths | None)] projected to `width` + type embeddings.

  Returns (tokens [B, sum N, width], valid length [B]); only the last source may be padded.
  """
  sources = sorted(media.items()) + ([("text", text)] if text is not None else [])
  if not sources:
    raise ValueError(f"{type(module).__name__}: no media and no text to fuse.")
  for name, (_, length) in sources[:-1]:
    if length is not None:
      raise ValueError(f"{type(module).__name__}: only the last source may be padded; {name!r} has lengths.")
  parts = []
  for name, (tokens, _) in sources:
    x = layers.Dense(width, ("media_embed",), ("embed",), dtype=dtype, name=f"proj_{name}")(tokens)
    type_emb = module.param(
      f"type_{name}", layers.param_with_axes(nn.initializers.normal(0.02), ("embed",)), (width,), jnp.float32
    )
    parts.append(x + type_emb.astype(x.dtype))
  out = layers.constrain_tokens(jnp.concatenate(parts, axis=1))
  last_tokens, last_len = sources[-1][1]
  b = out.shape[0]
  total = out.shape[1]
  valid = (
    jnp.full((b,), total, jnp.int32)
    if last_len is None
    else (total - last_tokens.shape[1] + last_len).astype(jnp.int32)
  )
  return out, valid


class PrefixLMFusion(Fusion):
  cross_attention_every: int = 0
  gated: bool = False
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, media, text=None):
    if self.cross_attention_every:
      raise ValueError("prefix_lm fusion feeds the decoder a prefix only: set cross_attention_every=0.")
    prefix, prefix_len = project_sources(self, media, text, self.width, self.dtype)
    return Conditioning(prefix=prefix, prefix_len=prefix_len)
