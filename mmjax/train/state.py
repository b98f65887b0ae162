"""The train state and what is built from a config once: model, mesh, optimizer, state shardings."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from mmjax import registry, sharding
from mmjax.data.config import images_per_batch
from mmjax.models import lora, model_class, transfer
from mmjax.train.batches import dummy_batch
from mmjax.train.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  # The parameters' exponential moving average (config.ema_decay > 0), sharded like them; None when off.
  ema: Any = None

  @property
  def model_params(self):
    """The parameters a trained model is used with: the EMA when the run keeps one."""
    return self.params if self.ema is None else self.ema

  def with_params(self, params) -> "TrainState":
    """New parameters at a fresh start (pretrained or copied subtrees): the EMA starts from them too."""
    # A copy, not the same buffers: the train step donates the state, and one buffer may not be
    # donated twice.
    return self.replace(params=params, ema=None if self.ema is None else jax.tree.map(jnp.copy, params))


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The EMA's decay for the update after `step` updates: min(decay, (1 + step) / (10 + step)), so that
  the average forgets its random initialisation within the first few hundred steps."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema, params, decay: jax.Array):
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf in the EMA's dtype."""
  return jax.tree.map(lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), ema, params)


@dataclasses.dataclass
class Setup:
  """Everything built from a config once: model, mesh, rules, optimizer, state shardings."""

  config: ml_collections.ConfigDict
  model: nn.Module
  mesh: Mesh
  rules: tuple
  tx: optax.GradientTransformation
  state_sharding: Any
  abstract_state: Any
  init_fn: Callable  # rng -> TrainState with logically boxed parameters (see init_state)

  def batch_sharding(self, batch) -> dict:
    return {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}

  def context(self):
    """Mesh + logical rules: needed while tracing anything that constrains activations."""
    return _mesh_and_rules(self.mesh, self.rules)

  @property
  def kind(self) -> type:
    """The model's class, with the model-kind hooks (mmjax.models.kind)."""
    return type(self.model)

  def make_evaluator(self, data, **options):
    """The evaluation of this model kind: evaluate(params, split, max_examples=0, progress=False)
    -> (metrics named "<split>/<metric>", predictions for sample.report.write_report). `options`: what
    a kind's evaluator takes beyond (setup, data), e.g. the text-to-image one's features_fn
    (mmjax.train.workdir.make_evaluator builds them)."""
    return registry.get("evaluators", self.kind.evaluator, "the model kind's evaluator")(self, data, **options)


@contextlib.contextmanager
def _mesh_and_rules(mesh, rules):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def make_setup(config: ml_collections.ConfigDict, vocab_size: int, devices=None) -> Setup:
  kind = model_class(config.model)
  kind.check_config(config)
  if config.grad_accum_steps > 1 and not kind.accumulates_gradients:
    raise ValueError(
      f"config.model.kind={config.model.kind!r} trains on the whole global batch at "
      "once: its loss couples the examples of the batch, so microbatches (grad accumulation) would "
      "change the objective; set config.grad_accum_steps=1 and a config.batch_size that fits."
    )
  # A kind that declares location_bins learns which of its ids are location tokens (the tokenizer
  # puts them last: mmjax.location_tokens.LocationTokens.for_vocab).
  extras = {"location_bins": int(config.data.location_bins)} if "location_bins" in kind.__dataclass_fields__ else {}
  model = kind(config.model, vocab_size, **extras)
  mesh = sharding.make_mesh(dict(config.mesh), dict(config.dcn_mesh), devices=devices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(
      f"config.batch_size={config.batch_size} is not divisible by the {shards} batch shards of the "
      f"mesh {dict(mesh.shape)} (data x fsdp); change config.batch_size or config.mesh."
    )
  images = images_per_batch(config)
  if images % shards:
    raise ValueError(
      f"config.batch_size={config.batch_size} gives train batches of {images} images (with "
      "config.data.questions_per_image / examples_per_image), not divisible by the "
      f"{shards} batch shards of the mesh {dict(mesh.shape)}; change one of them or config.mesh."
    )
  rules = sharding.rules_from_config(config.sharding.rules)
  tx = make_optimizer(config.optim, config.total_steps)
  # Frozen subtrees get zero updates and no optimizer state (config.model.freeze).
  tx = transfer.freeze(tx, tuple(config.model.freeze))
  # Subtrees that stop updating after N steps (config.model.freeze_after).
  tx = transfer.freeze_after(tx, dict(config.model.get("freeze_after", {})))
  adapters = lora_config(config.model)
  if adapters:  # LoRA: only the adapters and lora.train train (and none under config.model.freeze)
    tx = lora.train_adapters_only(tx, tuple(adapters.get("train", ())))
  batch = dummy_batch(config, 1)

  def init(rng):
    args, kwargs = kind.init_inputs(config.model, batch)
    variables = model.init(rng, *args, **kwargs)
    params = lora.add_adapters_from_config(variables["params"], adapters, jax.random.fold_in(rng, 1))
    ema = params if float(config.ema_decay) > 0 else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema=ema)

  with _mesh_and_rules(mesh, rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  state_sharding = nn.logical_to_mesh_sharding(logical, mesh, rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.meta.unbox(boxed), state_sharding
  )
  return Setup(config, model, mesh, rules, tx, state_sharding, abstract, init)


def lora_config(model_config) -> dict | None:
  """config.model.lora as add_adapters_from_config takes it; None when LoRA is off (rank 0)."""
  section = model_config.get("lora")
  if not section or not section.get("rank"):
    return None
  return {k: v for k, v in section.to_dict().items() if v is not None}


def init_state(setup: Setup, rng) -> TrainState:
  with setup.context():
    return jax.jit(lambda r: nn.meta.unbox(setup.init_fn(r)), out_shardings=setup.state_sharding)(rng)
