"""The interface every fusion family implements, and how a config's name finds a family.

A fusion module turns encoder outputs into a `Conditioning` for the decoder:
  prefix  tokens placed before the decoder's own tokens (early fusion / prefix-LM, PaliGemma);
  memory  tokens that decoder layers cross-attend to (cross-attention, Flamingo, Q-Former).
and says which decoder layers get cross-attention (`cross_attention_every`, `gated`). The decoder
consumes a Conditioning the same way whatever produced it, so a new family is one new file that
subclasses `Fusion` and a config that names it (`fusion.name = "my.module:MyFusion"`, or a short
name once it is in mmjax.registry.BUILTIN).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import flax.struct
import jax

from mmjax import registry


@flax.struct.dataclass
class Conditioning:
  prefix: Optional[jax.Array] = None  # [B, P, D]
  prefix_len: Optional[jax.Array] = None  # [B] valid prefix tokens (the rest is padding)
  memory: Optional[jax.Array] = None  # [B, M, D]
  memory_len: Optional[jax.Array] = None  # [B] valid memory tokens (the rest is padding)


class Fusion(nn.Module):
  """Base class. Subclasses implement __call__(media, text) -> Conditioning.

  media: dict modality -> (tokens [B, N, D_m], lengths [B] or None); text: (tokens [B, L, D_t],
  lengths [B]) from the text encoder, or None when the family feeds the prompt elsewhere.
  """

  width: int = 128  # decoder width

  # Decoder layers i with (i + 1) % cross_attention_every == 0 get cross-attention; 0 = none.
  cross_attention_every: int = 0
  gated: bool = False

  def shares_media_across_prompts(self) -> bool:
    """Whether one row of media may serve several prompts (an image batch that divides the prompt
    batch: G consecutive prompts per image). True only where the memory is built from the media
    alone and the prompt enters elsewhere, so an image is encoded once for all of its questions.
    Default: no."""
    return False

  @classmethod
  def masks_padded_media(cls, modality: str, modalities: Sequence[str]) -> bool:
    """Whether the family masks out the padding of `modality` when the media dict holds
    `modalities` and gives `modality` token lengths (the others none). Default: no, i.e. only the
    text (the last source) may be padded, as in cross_attention and prefix_lm, which raise on
    padded media. Families that mask padded media override this."""
    return False


def family(name: str) -> type[Fusion]:
  """The Fusion subclass `name` (config.model.fusion.name) names, through mmjax.registry."""
  cls = registry.get("fusion", name, "config.model.fusion.name")
  if not (isinstance(cls, type) and issubclass(cls, Fusion)):
    raise ValueError(f"config.model.fusion.name={name!r} names {cls!r}, which is not a mmjax.fusion.Fusion subclass.")
  return cls


def build_fusion(name: str, **kwargs) -> Fusion:
  return family(name)(**kwargs)
