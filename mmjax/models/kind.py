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


def model_class(model_config: ml_collections.ConfigDict) -> type:
  """The class config.model.kind names ("vlm" when the key is absent, as in older configs)."""
  name = str(model_config.get("kind", "vlm") or "vlm")
  cls = registry.get("models", name, "config.model.kind")
  missing = [h for h in HOOKS if not hasattr(cls, h)]
  if missing:
    raise ValueError(
      f"config.model.kind={name!r} names {cls!r}, which lacks the model-kind hooks {missing} (see mmjax.models.kind)."
    )
  return cls


def build_model(model_config: ml_collections.ConfigDict, vocab_size: int):
  return model_class(model_config)(model_config, vocab_size)
