"""Encoders turn one modality into token embeddings [B, N, D]."""
from mmjax.encoders.vit import ViT
from mmjax.encoders.text import TextEncoder

__all__ = ["ViT", "TextEncoder"]
