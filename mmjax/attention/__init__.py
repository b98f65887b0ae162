"""The one attention function every encoder, fusion and decoder layer calls.

  out = attention(q, k, v, mask=MaskSpec(...), implementation="auto")

q: [B, Sq, Hq, D]; k, v: [B, Skv, Hkv, D] with Hq a multiple of Hkv (GQA / MQA). Backends are
picked by name through mmjax.registry (IMPLEMENTATIONS lists the built-in ones; `backend(name)`
returns one's function).
"""

from mmjax.attention.dispatch import IMPLEMENTATIONS, attention, backend, choose_auto
from mmjax.attention.errors import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec, tile_map

__all__ = ["attention", "backend", "choose_auto", "MaskSpec", "tile_map", "IMPLEMENTATIONS", "UnsupportedAttention"]
