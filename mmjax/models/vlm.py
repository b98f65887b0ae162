"""Vision-language model: image encoder + text encoder -> fusion -> causal decoder."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.decoders import Decoder
from mmjax.encoders import TextEncoder, ViT
from mmjax.fusion import Conditioning, build_fusion


class VisionLanguageModel(nn.Module):
  """Answers prompts about images. Built from `config.model` by `build_model`.

  Methods:
    __call__(images, prompt, prompt_len, target_in) -> logits [B, Lt, V] (teacher forcing)
    encode(images, prompt, prompt_len) -> Conditioning
    decode(tokens, cond, start) -> logits (with the `cache` collection mutable)
  """
  config: ml_collections.ConfigDict
  vocab_size: int

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    impl = c.attention_implementation
    self.image_encoder = ViT(**c.vit.to_dict(), implementation=impl, dtype=dtype)
    self.text_encoder = TextEncoder(self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype)
    self.fusion = build_fusion(c.fusion.name, width=c.decoder.width, implementation=impl, dtype=dtype,
                               **{k: v for k, v in c.fusion.to_dict().items() if k != "name"})
    self.decoder = Decoder(self.vocab_size, **c.decoder.to_dict(),
                           cross_attention_every=self.fusion.cross_attention_every,
                           gated_cross_attention=self.fusion.gated, implementation=impl, dtype=dtype)

  def encode(self, images, prompt, prompt_len) -> Conditioning:
    image_tokens = self.image_encoder(images)
    text_tokens = self.text_encoder(prompt, prompt_len)
    return self.fusion({"image": (image_tokens, None)}, (text_tokens, prompt_len))

  def decode(self, tokens, cond: Conditioning, start):
    return self.decoder(tokens, cond, start=start, decode=True)

  def __call__(self, images, prompt, prompt_len, target_in):
    return self.decoder(target_in, self.encode(images, prompt, prompt_len))


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int) -> VisionLanguageModel:
  return VisionLanguageModel(model_config, vocab_size)
