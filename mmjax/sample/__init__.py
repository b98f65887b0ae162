"""Autoregressive decoding: token samplers, sampled decoding and beam search (see samplers.py)."""
from mmjax.sample.samplers import (
  Sampler, Greedy, Temperature, TopK, TopP, sampler_from_config, decode, beam_search, length_normalizer,
  nucleus_mask,
)

__all__ = [
  "Sampler", "Greedy", "Temperature", "TopK", "TopP", "sampler_from_config", "decode", "beam_search",
  "length_normalizer", "nucleus_mask",
]
