"""The one attention function every encoder, fusion and decoder layer calls.

  out = attention(q, k, v, mask=MaskSpec(...), implementation="auto")

q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D] with Hq a multiple of Hkv (GQA / MQA).
"""
from mmjax.kernels.mask import MaskSpec, tile_map
from mmjax.attention.dispatch import attention, IMPLEMENTATIONS, UnsupportedAttention

__all__ = ["attention", "MaskSpec", "tile_map", "IMPLEMENTATIONS", "UnsupportedAttention"]
