"""Decoders generate: a causal text LM with a KV cache."""

from mmjax.decoders.lm import Decoder

__all__ = ["Decoder"]
