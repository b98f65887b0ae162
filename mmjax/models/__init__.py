"""Whole models: encoders -> fusion -> decoder (kind "vlm"), or two contrastive towers (kind "contrastive").

`config.model.kind` picks the model: "vlm" (the default, also when the key is absent, so older
configs and checkpoints build the same model) or "contrastive" (CLIP / SigLIP, see contrastive.py).
"""
import ml_collections

from mmjax.models.contrastive import ContrastiveModel
from mmjax.models.vlm import VisionLanguageModel

MODEL_KINDS = ("vlm", "contrastive")


def model_kind(model_config) -> str:
  """config.model.kind ("vlm" when absent); an unknown kind is an error naming the choices."""
  kind = str(model_config.get("kind", "vlm") or "vlm")
  if kind not in MODEL_KINDS:
    raise ValueError(f"unknown --config.model.kind={kind!r}; use one of {MODEL_KINDS}.")
  return kind


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int):
  if model_kind(model_config) == "contrastive":
    return ContrastiveModel(model_config, vocab_size)
  return VisionLanguageModel(model_config, vocab_size)


__all__ = ["VisionLanguageModel", "ContrastiveModel", "MODEL_KINDS", "build_model", "model_kind"]
