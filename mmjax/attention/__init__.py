"""The one attention function every encoder, fusion and decoder layer calls.

  out = attention(q, k, v, mask=MaskSpec(...), implementation="auto")

q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D] with Hq a multiple of Hkv (GQA / MQA).
"""
from mmjax.kernels.mask import MaskSpec, tile_map
from mmjax.attention.dispatch import attention, IMPLEMENTATIONS, UnsupportedAttention
# Imported for their side effect: each registers itself in IMPLEMENTATIONS.
from mmjax.attention import chunked, gpu, splash  # noqa: F401,E402

__all__ = ["attention", "MaskSpec", "tile_map", "IMPLEMENTATIONS", "UnsupportedAttention"]
