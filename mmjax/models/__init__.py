"""Whole models: encoders -> fusion -> decoder."""
from mmjax.models.vlm import VisionLanguageModel, build_model

__all__ = ["VisionLanguageModel", "build_model"]
