"""Encoders turn one modality into token embeddings [B, N, D]."""

from mmjax.encoders.audio import AudioEncoder, log_mel_spectrogram, mel_filterbank
from mmjax.encoders.text import TextEncoder
from mmjax.encoders.video import VideoEncoder
from mmjax.encoders.vit import ViT

__all__ = ["ViT", "TextEncoder", "AudioEncoder", "VideoEncoder", "log_mel_spectrogram", "mel_filterbank"]
