"""Autoregressive decoding: token samplers, sampled decoding and beam search (see samplers.py)."""

from mmjax.sample.samplers import (
  Greedy,
  Sampler,
  Temperature,
  TopK,
  TopP,
  beam_search,
  decode,
  length_normalizer,
  nucleus_mask,
  sampler_from_config,
)

__all__ = [
  "Sampler",
  "Greedy",
  "Temperature",
  "TopK",
  "TopP",
  "sampler_from_config",
  "decode",
  "beam_search",
  "length_normalizer",
  "nucleus_mask",
]
