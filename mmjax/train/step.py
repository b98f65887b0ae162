"""The jit-compiled train step: gradients of the model kind's loss (summed over microbatches when
asked), the optimizer update, and the step's metrics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.train.batches import batch_keys
from mmjax.train.state import Setup, TrainState, ema_decay_at, ema_update


def _microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] with microbatch j = rows j, j+k, j+2k, ...: every device keeps its
  share of every microbatch (rows stay on the device that holds them), so no data moves.

  With G prompts per image (the image batch B/G, data.questions_per_image) the rows are split by
  image: microbatch j holds images j, j+k, ... and the G prompts of each."""
  n_images = batch["image"].shape[0]

  def split(x):
    group = x.shape[0] // n_images
    if n_images % k:
      raise ValueError(f"grad_accum_steps={k} does not divide the batch of {n_images} images.")
    x = x.reshape(n_images // k, k, group, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(k, n_images // k * group, *x.shape[3:])

  return jax.tree.map(split, batch)


def grads_and_metrics(model, params, batch, grad_accum_steps: int = 1, rng: jax.Array | None = None):
  """Gradient of the model's loss over the whole batch (its kind's loss_sums: the objective summed
  over the batch, divided by the summed weight), summed over `grad_accum_steps` microbatches inside
  one lax.scan (activation memory of one microbatch). Returns (grads, metrics): "loss" and every
  other sum of loss_sums divided by the weight.

  rng: the step's key, given to loss_sums as the flax rng stream "sample" (a kind whose loss draws
  noise, e.g. flow matching's times and noise; microbatch j gets fold_in(rng, j)). Kinds that draw
  nothing ignore it."""
  rng = jax.random.key(0) if rng is None else rng

  def sums_fn(p, b, r):
    objective, sums = model.apply({"params": p}, b, method="loss_sums", rngs={"sample": r})
    return objective, dict(sums, loss=objective)

  grad_fn = jax.grad(sums_fn, has_aux=True)
  if grad_accum_steps <= 1:
    grads, sums = grad_fn(params, batch, rng)
  else:
    micro = _microbatches(batch, grad_accum_steps)
    _, sums_shape = jax.eval_shape(sums_fn, params, jax.tree.map(lambda x: x[0], micro), rng)

    def body(carry, xs):
      j, mb = xs
      mb = {k: sharding.constrain(v, ("act_batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
      g, s = grad_fn(params, mb, jax.random.fold_in(rng, j))
      acc_g, acc_s = carry
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, s)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape))
    (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
  # Token-mean (VLM) semantics: an all-padding batch has weight 0 and must not divide by it.
  denom = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  return grads, {k: v / denom for k, v in sums.items() if k != "weight"}


def make_train_step(
  setup: Setup, batch_example: dict, skip_nonfinite: bool = False, grad_accum_steps: int | None = None
):
  """jit-compiled step with explicit in/out shardings; the state is donated (updated in place).

  grad_accum_steps (default: config.grad_accum_steps or 1) splits the batch into that many
  microbatches whose gradients are summed before the single optimizer update.
  """
  model, tx = setup.model, setup.tx
  accum = int(grad_accum_steps or setup.config.grad_accum_steps)

  seed_key = jax.random.key(int(setup.config.seed))

  def step(state: TrainState, batch):
    # One key per step from the seed: a resumed run draws what the uninterrupted one would have.
    grads, metrics = grads_and_metrics(model, state.params, batch, accum, jax.random.fold_in(seed_key, state.step))
    loss = metrics["loss"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
      ema = ema_update(ema, params, ema_decay_at(float(setup.config.ema_decay), state.step))
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      # Keep the old parameters and optimizer state: a bad batch must not poison the run.
      params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
      opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
      if ema is not None:
        ema = jax.tree.map(lambda new, old: jnp.where(finite, new, old), ema, state.ema)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema=ema), metrics

  batch_sharding = {k: setup.batch_sharding(batch_example)[k] for k in batch_keys(setup.config)}
  replicated = NamedSharding(setup.mesh, P())
  return jax.jit(
    step,
    in_shardings=(setup.state_sharding, batch_sharding),
    out_shardings=(setup.state_sharding, replicated),
    donate_argnums=(0,),
  )
