"""Pretrained towers in an mmjax model: `config.model.init_from_pretrained.<subtree> = checkpoint dir`.

  config.model.init_from_pretrained = {"image_encoder": "/ckpt/siglip", "decoder": "/ckpt/gemma"}
  config.model.init_from_pretrained = {"contrastive": "/ckpt/clip"}   # a whole CLIP / SigLIP model

`configure(config)` fills each named subtree's config block with the checkpoint's architecture
(config.model.vit for the image encoder, .text, .decoder, .audio), and the data's tokenizer with the
decoder's (or text encoder's) when none is named, so a user names checkpoints, not widths.
`load_into(params, config)` then replaces those subtrees of freshly initialised parameters with the
checkpoint's, each array created in the sharding of the parameter it replaces. The rest of the model
(fusion, projections, any tower without a checkpoint) keeps its fresh initialisation; freezing and
LoRA are the usual config.model.freeze / config.model.lora.
"""

from __future__ import annotations

import ml_collections
from flax import traverse_util

from mmjax import pretrained
from mmjax.models.vlm import image_encoder_block

# VisionLanguageModel subtree -> (the config.model block holding its fields, the Part module it takes).
SUBTREES = {
  "image_encoder": (lambda m: image_encoder_block(str(m.image_encoder)), "vit"),
  "text_encoder": (lambda m: "text", "text"),
  "decoder": (lambda m: "decoder", "decoder"),
  "audio_encoder": (lambda m: "audio", "audio"),
}
# The whole-model part: a CLIP / SigLIP checkpoint as a config.model.kind="contrastive" model (its
# towers, pooling, projections and logit scale), filling all of config.model and of the params.
WHOLE = "contrastive"
# Fields the model passes itself (the vocabulary comes from the tokenizer).
_MODEL_GIVEN = ("vocab_size",)
# Layers a composed model adds inside a pretrained tower, which keep their fresh initialisation:
# Flamingo's gated cross-attention in a decoder, LoRA adapters.
FRESH = ("cross_attention", "norm_cross", "cross_gate", "lora_a", "lora_b", "lora_scale")


def requested(config) -> dict[str, str]:
  return {k: str(v) for k, v in dict(config.model.get("init_from_pretrained") or {}).items() if v}


def configure(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose blocks for the requested subtrees hold the checkpoints' fields."""
  wanted = requested(config)
  if not wanted:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  for subtree, path in wanted.items():
    if subtree == WHOLE:
      for key, value in pretrained.part(path, WHOLE).fields["config"].items():  # blocks replaced whole
        config.model[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
      config.data.update(pretrained.part(path, "image_encoder").data)
      config.data.tokenizer = config.data.get("tokenizer") or path
      continue
    if subtree not in SUBTREES:
      raise ValueError(
        f"config.model.init_from_pretrained.{subtree}: not a subtree a checkpoint can fill; "
        f"use one of {sorted(SUBTREES) + [WHOLE]}."
      )
    if config.model.get("scan_layers"):
      raise ValueError(
        "config.model.init_from_pretrained needs config.model.scan_layers=False "
        "(checkpoints hold one tensor per layer)."
      )
    block_of, module = SUBTREES[subtree]
    part = pretrained.part(path, subtree)
    if part.module != module:
      raise ValueError(f"{path}: its {subtree} part is a {part.module!r} module, not {module!r}.")
    fields = {k: v for k, v in part.fields.items() if k not in _MODEL_GIVEN}
    if subtree == "audio_encoder":
      fields["mask_padding"] = bool((config.model.get("audio") or {}).get("mask_padding", True))
    config.model[block_of(config.model)] = ml_collections.ConfigDict(fields)
    for key, value in part.data.items():  # e.g. the image size a learned position table was trained at
      config.data[key] = value
  tokenizer_from = wanted.get("decoder") or wanted.get("text_encoder")
  if tokenizer_from and not config.data.get("tokenizer"):
    config.data.tokenizer = tokenizer_from
  return config


def load_into(params, config) -> dict:
  """`params` (initialised, sharded) with the requested subtrees loaded from their checkpoints."""
  wanted = requested(config)
  if not wanted:
    return params
  params = dict(params)
  if WHOLE in wanted:
    target = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    return pretrained.load(wanted[WHOLE], WHOLE, target=target, fresh=FRESH)
  for subtree, path in wanted.items():
    if subtree not in params:
      raise KeyError(f"config.model.init_from_pretrained.{subtree}: the model has no such subtree ({sorted(params)}).")
    target = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(params[subtree])).items()}
    params[subtree] = pretrained.load(path, subtree, target=target, fresh=FRESH)
  return params
