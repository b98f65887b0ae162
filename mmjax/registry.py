"""The one way a config picks a component: attention backends, encoders, fusion families,
decoders, model kinds, evaluators and datasets.

A config names a component by a short name from the table below, or by `"module.path:Attribute"`
for anything else: a project's encoder (`"mmjax.projects.shapes.objects:ObjectEncoder"`), a user's
module, or a family defined in a notebook (`"__main__:PooledPrefixFusion"`). The core never imports
a project: the config that names it does, by naming it (as big_vision finds
`big_vision.models.proj.<name>` by import path).

The table is the single list of built-in choices (as MaxText keeps one): reading it tells a user
every name a config may use, and resolving a name imports only the module it points at, so a
GPU-only or TPU-only backend costs nothing on a machine that never asks for it.
"""

from __future__ import annotations

import importlib

# floor -> short name -> "module:attribute". Each floor's entries share one interface:
#   attention   fn(q, k, v, mask, scale, softcap) -> out; raises attention.UnsupportedAttention.
#   encoders    flax Module class: tokens [B, N, D] from one modality.
#   fusion      fusion.Fusion subclass: media + text -> Conditioning.
#   decoders    flax Module class: tokens + Conditioning -> logits (KV cache in decode mode).
#   models      flax Module class with the model-kind hooks of mmjax.models.kind.ModelKind.
#   evaluators  fn(setup, data) -> evaluate(params, split, max_examples=0, progress=False).
#   datasets    mmjax.data.source.DatasetSource: a dataset's builder and hooks (config.data.source).
#   pretrained  fn(hf_config: dict, tensor_names) -> {part name: mmjax.pretrained.convert.Part}, by the
#               checkpoint's config.json "model_type" (mmjax.pretrained).
BUILTIN: dict[str, dict[str, str]] = {
  "attention": {
    "xla": "mmjax.attention.xla:xla_attention",
    "xla_chunked": "mmjax.attention.xla_chunked:xla_chunked",
    "triton": "mmjax.attention.triton:triton_attention",
    "cudnn": "mmjax.attention.cudnn:cudnn_attention",
    "splash": "mmjax.attention.splash:splash_attention",
  },
  "encoders": {
    "vit": "mmjax.encoders.vit:ViT",
    "text": "mmjax.encoders.text:TextEncoder",
    "audio": "mmjax.encoders.audio:AudioEncoder",
    "video": "mmjax.encoders.video:VideoEncoder",
  },
  "fusion": {
    "cross_attention": "mmjax.fusion.cross_attention:CrossAttentionFusion",
    "prefix_lm": "mmjax.fusion.prefix_lm:PrefixLMFusion",
    "flamingo": "mmjax.fusion.flamingo:FlamingoFusion",
    "qformer": "mmjax.fusion.qformer:QFormerFusion",
  },
  "decoders": {
    "lm": "mmjax.decoders.lm:Decoder",
  },
  "models": {
    "vlm": "mmjax.models.vlm:VisionLanguageModel",
    "contrastive": "mmjax.models.contrastive:ContrastiveModel",
    "t2i_flow": "mmjax.models.text_to_image:TextToImageFlow",
    "t2i_tokens": "mmjax.models.image_tokens:TextToImageTokens",
    "t2i_pixels": "mmjax.models.pixel_tokens:TextToImagePixels",
  },
  "evaluators": {
    "generative": "mmjax.evaluate.evaluator:make_evaluator",
    "contrastive": "mmjax.evaluate.contrastive:make_evaluator",
    "t2i": "mmjax.evaluate.text_to_image:make_evaluator",
  },
  "datasets": {
    "manifest": "mmjax.data.tfds_builders:MANIFEST",
  },
  "pretrained": {
    "gpt2": "mmjax.pretrained.gpt2:parts",
    "llama": "mmjax.pretrained.llama:parts",
    "gemma": "mmjax.pretrained.llama:parts",
    "clip": "mmjax.pretrained.clip:parts",
    "siglip": "mmjax.pretrained.clip:parts",
    "vit": "mmjax.pretrained.vit:parts",
    "bert": "mmjax.pretrained.bert:parts",
    "whisper": "mmjax.pretrained.whisper:parts",
  },
}


def names(floor: str) -> list[str]:
  """The built-in short names of `floor` (what error messages offer)."""
  return sorted(_table(floor))


def get(floor: str, name: str, what: str | None = None):
  """The component `name` of `floor`: a short name of BUILTIN[floor] or "module.path:Attribute".

  `what` says where the name came from (a config key such as "config.model.fusion.name"), so that
  an unknown name is an error naming that key and the choices.
  """
  table = _table(floor)
  where = what or f"{floor} component"
  if not isinstance(name, str) or not name:
    raise ValueError(f"{where}={name!r}: give one of {sorted(table)} or 'module.path:Attribute'.")
  target = table.get(name, name)
  module_name, sep, attribute = target.partition(":")
  if not sep or not module_name or not attribute:
    raise ValueError(
      f"{where}={name!r} is not a built-in {floor} name; use one of {sorted(table)}, "
      "or 'module.path:Attribute' for your own."
    )
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):  # the named module itself, not one it imports
      raise ValueError(f"{where}={name!r}: no module {module_name!r} to import.") from e
    raise
  if not hasattr(module, attribute):
    raise ValueError(f"{where}={name!r}: module {module_name!r} has no attribute {attribute!r}.")
  return getattr(module, attribute)


def _table(floor: str) -> dict[str, str]:
  if floor not in BUILTIN:
    raise ValueError(f"unknown component floor {floor!r}; floors: {sorted(BUILTIN)}.")
  return BUILTIN[floor]
