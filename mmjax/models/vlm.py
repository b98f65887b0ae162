"""Vision-language model: image encoder + text encoder -> fusion -> causal decoder."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.decoders import Decoder
from mmjax.encoders import TextEncoder, ViT
from mmjax.fusion import FUSIONS, Conditioning, build_fusion


class VisionLanguageModel(nn.Module):
  """Answers prompts about images. Built from `config.model` by `build_model`.

  Methods:
    __call__(images, prompt, prompt_len, target_in) -> logits [B, Lt, V] (teacher forcing)
    encode(images, prompt, prompt_len) -> Conditioning
    decode(tokens, cond, start) -> logits (with the `cache` collection mutable)
    prefill_length(cond) -> int: positions a prefill decode call (start=0, empty tokens) writes
      before the first generated token (the prefix of prefix-LM fusions; 0 otherwise).
  """
  config: ml_collections.ConfigDict
  vocab_size: int

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    impl = c.attention_implementation
    # Memory knobs (absent from older configs): rematerialisation policy and scanning over layers.
    knobs = dict(remat=str(c.get("remat", "none") or "none"), scan_layers=bool(c.get("scan_layers", False)))
    self.image_encoder = ViT(**c.vit.to_dict(), implementation=impl, dtype=dtype, **knobs)
    self.text_encoder = TextEncoder(self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype, **knobs)
    fusion_knobs = {k: v for k, v in knobs.items() if k in getattr(FUSIONS.get(c.fusion.name), "__dataclass_fields__", {})}
    self.fusion = build_fusion(c.fusion.name, width=c.decoder.width, implementation=impl, dtype=dtype,
                               **fusion_knobs, **{k: v for k, v in c.fusion.to_dict().items() if k != "name"})
    self.decoder = Decoder(self.vocab_size, **c.decoder.to_dict(),
                           cross_attention_every=self.fusion.cross_attention_every,
                           gated_cross_attention=self.fusion.gated, implementation=impl, dtype=dtype, **knobs)

  def encode(self, images, prompt, prompt_len) -> Conditioning:
    image_tokens = self.image_encoder(images)
    text_tokens = self.text_encoder(prompt, prompt_len)
    return self.fusion({"image": (image_tokens, None)}, (text_tokens, prompt_len))

  def decode(self, tokens, cond: Conditioning, start):
    return self.decoder(tokens, cond, start=start, decode=True)

  @staticmethod
  def prefill_length(cond: Conditioning) -> int:
    return 0 if cond.prefix is None else int(cond.prefix.shape[1])

  def __call__(self, images, prompt, prompt_len, target_in):
    return self.decoder(target_in, self.encode(images, prompt, prompt_len))


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int) -> VisionLanguageModel:
  return VisionLanguageModel(model_config, vocab_size)
