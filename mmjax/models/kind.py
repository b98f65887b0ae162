"""Model kinds: how `config.model.kind` picks a whole model, and what the trainer asks of it.

A kind is a flax Module class named through mmjax.registry ("vlm", "contrastive", or
"module.path:Class" for one's own), built as `cls(config.model, vocab_size)`. Everything the one
trainer does differently per kind is asked of the class, so a new kind is one new file plus a config:

  evaluator              registry name of its evaluation (floor "evaluators").
  train_tasks            the data tasks it trains on (None: all of the dataset's).
  progress_metric        the train metric shown next to the loss on the progress bar.
  accumulates_gradients  whether its loss is a sum over examples, so microbatches may add up.
  check_config(config)   start-up errors of configs it cannot train (naming the key).
  batch_keys(model_config) -> the batch keys its loss reads.
  init_inputs(model_config, batch) -> (args, kwargs) of model.init from a dummy batch.
  loss_sums(self, batch) -> (objective, sums): a bound method (model.apply(..., method="loss_sums"))
      returning the objective summed over the batch and a dict of metric sums with its "weight";
      the trainer reports objective / weight as the loss and every other sum / weight.

Text-to-image kinds (evaluator "t2i") also name how they draw and what prompt they read:
  image_sampler          "flow" | "tokens" | "pixels" (mmjax.sample.text_to_image).
  max_prompt_len(model_config) -> the most caption tokens a prompt may have.
"""

from __future__ import annotations

import ml_collections

from mmjax import registry

HOOKS = (
  "evaluator",
  "train_tasks",
  "progress_metric",
  "accumulates_gradients",
  "check_config",
  "batch_keys",
  "init_inputs",
  "loss_sums",
)


def base_model_config() -> ml_collections.ConfigDict:
  """The keys of `config.model` that every kind reads, at their defaults (the one place they are set;
  an experiment config adds its kind's own blocks, e.g. vit / text / fusion / decoder)."""
  return ml_collections.ConfigDict(
    dict(
      kind="vlm",  # registry name (floor "models") or "module:Class"
      dtype="float32",  # compute dtype; parameters stay float32
      attention_implementation="auto",  # mmjax.attention.dispatch
      remat="none",  # none | full | dots_saveable | ... (mmjax.layers.REMAT_POLICIES)
      scan_layers=False,  # nn.scan over identical blocks (params gain a leading "layers" axis)
      image_encoder="vit",  # registry name (floor "encoders") or "module:Class"; its fields in its own block
      freeze=(),  # top-level parameter subtrees that never update, e.g. ("image_encoder",)
      # {"image_tokenizer": 600}: subtrees that stop updating after that many steps (stationary codes
      # for the decoder that learns them; mmjax.models.transfer.freeze_after).
      freeze_after=ml_collections.ConfigDict(),
      # {"image_encoder": "/path/to/workdir"}: subtrees copied from trained runs at a fresh start.
      init_from=ml_collections.ConfigDict(),
      # {"image_encoder": "/ckpt/siglip", "decoder": "/ckpt/gemma"}: Hugging Face checkpoints whose
      # architecture and weights those subtrees take (mmjax.pretrained.compose).
      init_from_pretrained=ml_collections.ConfigDict(),
      # LoRA (mmjax.models.lora): rank > 0 adds adapters to the Dense layers matching `targets`
      # (e.g. ("query", "value") or "decoder/**/query") and trains only them and the subtrees in
      # `train` (e.g. ("fusion",): new layers around pretrained towers); alpha None = rank.
      lora=ml_collections.ConfigDict(dict(targets=(), rank=0, alpha=None, train=())),
      # Optional encoders: a block of AudioEncoder / VideoEncoder fields (plus mask_padding) turns one on.
      audio=None,
      video=None,
    )
  )


def model_class(model_config: ml_collections.ConfigDict) -> type:
  """The class config.model.kind names."""
  name = str(model_config.kind)
  cls = registry.get("models", name, "config.model.kind")
  missing = [h for h in HOOKS if not hasattr(cls, h)]
  if missing:
    raise ValueError(
      f"config.model.kind={name!r} names {cls!r}, which lacks the model-kind hooks {missing} (see mmjax.models.kind)."
    )
  return cls


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int):
  return model_class(model_config)(model_config, vocab_size)
