"""Whole models: encoders -> fusion -> decoder ("vlm"), or two contrastive towers ("contrastive").

`config.model.kind` picks the model through mmjax.registry (see kind.py for what a kind provides).
"""

from mmjax.models.contrastive import ContrastiveModel
from mmjax.models.kind import build_model, model_class
from mmjax.models.vlm import VisionLanguageModel

__all__ = ["VisionLanguageModel", "ContrastiveModel", "build_model", "model_class"]
