"""Train state, its logical-axis shardings, and the jit-compiled train step."""
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
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.models import build_model, transfer
from mmjax.train.optim import make_optimizer

BATCH_KEYS = ("image", "prompt", "prompt_len", "target_in", "target_out", "target_mask")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


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


@contextlib.contextmanager
def _mesh_and_rules(mesh, rules):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict:
  s = config.data.image_size
  return {
      "image": np.zeros((batch_size, s, s, 3), np.uint8),
      "prompt": np.ones((batch_size, config.data.max_prompt_len), np.int32),
      "prompt_len": np.full((batch_size,), config.data.max_prompt_len, np.int32),
      "target_in": np.ones((batch_size, config.data.max_target_len), np.int32),
      "target_out": np.ones((batch_size, config.data.max_target_len), np.int32),
      "target_mask": np.ones((batch_size, config.data.max_target_len), np.float32),
  }


def make_setup(config: ml_collections.ConfigDict, vocab_size: int, devices=None) -> Setup:
  model = build_model(config.model, vocab_size)
  mesh = sharding.make_mesh(dict(config.mesh), dict(config.get("dcn_mesh", {}) or {}), devices=devices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(f"--config.batch_size={config.batch_size} is not divisible by the {shards} batch shards of the "
                     f"mesh {dict(mesh.shape)} (data x fsdp); change --config.batch_size or --config.mesh.")
  rules = sharding.rules_from_config(config.sharding.rules)
  tx = make_optimizer(config.optim, config.total_steps)
  # Frozen subtrees get zero updates and no optimizer state (config.model.freeze).
  tx = transfer.freeze(tx, tuple(config.model.get("freeze", ()) or ()))
  batch = dummy_batch(config, 1)

  def init(rng):
    variables = model.init(rng, batch["image"], batch["prompt"], batch["prompt_len"], batch["target_in"])
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  with _mesh_and_rules(mesh, rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  state_sharding = nn.logical_to_mesh_sharding(logical, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), state_sharding)
  return Setup(config, model, mesh, rules, tx, state_sharding, abstract, init)


def init_state(setup: Setup, rng) -> TrainState:
  with setup.context():
    return jax.jit(lambda r: nn.meta.unbox(setup.init_fn(r)), out_shardings=setup.state_sharding)(rng)


def loss_sums(model, params, batch):
  """Unnormalised sums over the batch: (sum of weighted xent, (that sum, correct tokens, weight)).

  Sums (not means) so microbatches add up exactly to the full batch (gradient accumulation).
  """
  logits = model.apply({"params": params}, batch["image"], batch["prompt"], batch["prompt_len"], batch["target_in"])
  labels = batch["target_out"]
  weights = batch["target_mask"]
  xent = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  xent_sum = (xent * weights).sum()
  correct = ((logits.argmax(-1) == labels) * weights).sum()
  return xent_sum, (xent_sum, correct, weights.sum())


def loss_fn(model, params, batch):
  xent_sum, (_, correct, n) = loss_sums(model, params, batch)
  denom = jnp.maximum(n, 1.0)
  loss = xent_sum / denom
  return loss, {"loss": loss, "token_accuracy": correct / denom}


def _microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] with microbatch j = rows j, j+k, j+2k, ...: every device keeps its
  share of every microbatch (rows stay on the device that holds them), so no data moves."""
  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"grad_accum_steps={k} does not divide the batch of {x.shape[0]}.")
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def grads_and_metrics(model, params, batch, grad_accum_steps: int = 1):
  """Gradient of the token-mean loss over the whole batch, summed over `grad_accum_steps`
  microbatches inside one lax.scan (activation memory of one microbatch)."""
  grad_fn = jax.grad(lambda p, b: loss_sums(model, p, b), has_aux=True)
  if grad_accum_steps <= 1:
    grads, (xent_sum, correct, n) = grad_fn(params, batch)
  else:
    micro = _microbatches(batch, grad_accum_steps)

    def body(carry, mb):
      mb = {k: sharding.constrain(v, ("act_batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
      g, sums = grad_fn(params, mb)
      acc_g, acc_s = carry
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()), jnp.zeros(()), jnp.zeros(())))
    (grads, (xent_sum, correct, n)), _ = jax.lax.scan(body, zeros, micro)
  denom = jnp.maximum(n, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  loss = xent_sum / denom
  return grads, {"loss": loss, "token_accuracy": correct / denom}


def make_train_step(setup: Setup, batch_example: dict, skip_nonfinite: bool = False,
                    grad_accum_steps: int | None = None):
  """jit-compiled step with explicit in/out shardings; the state is donated (updated in place).

  grad_accum_steps (default: config.grad_accum_steps or 1) splits the batch into that many
  microbatches whose gradients are summed before the single optimizer update.
  """
  model, tx = setup.model, setup.tx
  accum = int(grad_accum_steps or setup.config.get("grad_accum_steps", 1) or 1)

  def step(state: TrainState, batch):
    grads, metrics = grads_and_metrics(model, state.params, batch, accum)
    loss = metrics["loss"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      # Keep the old parameters and optimizer state: a bad batch must not poison the run.
      params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
      opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_sharding = {k: setup.batch_sharding(batch_example)[k] for k in BATCH_KEYS}
  replicated = NamedSharding(setup.mesh, P())
  return jax.jit(step, in_shardings=(setup.state_sharding, batch_sharding),
                 out_shardings=(setup.state_sharding, replicated), donate_argnums=(0,))
