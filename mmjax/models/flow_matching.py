"""Rectified flow / flow matching: the training objective as pure functions (no module).

Time convention: t = 0 is data, t = 1 is noise. A data example x0 and a noise draw eps ~ N(0, I)
are joined by the straight line

    x_t = (1 - t) x0 + t eps,          dx_t / dt = eps - x0 =: v (the velocity target).

A network v_theta(x_t, t) trained with E |v_theta(x_t, t) - v|^2 learns the marginal field
u(x, t) = E[eps - x0 | x_t = x], whose ODE dx/dt = u(x, t) carries the noise distribution at t = 1
to the data distribution at t = 0. Sampling (mmjax.sample.flow) therefore integrates from t = 1 down
to t = 0, starting from pure noise.

Classifier-free guidance: during training `drop_condition` replaces the condition of a random
fraction of rows by the null condition (an empty text: length 0); at sampling `guided` mixes the
conditional and unconditional velocities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

T_KINDS = ("logit_normal", "uniform")


def _per_example(t: jax.Array, x: jax.Array) -> jax.Array:
  """t [B] (or scalar) reshaped to broadcast over x [B, ...]."""
  t = jnp.asarray(t, jnp.float32)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t eps; t [B] or scalar."""
  t = _per_example(t, x0)
  return (1.0 - t) * x0 + t * eps


def velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
  """v = eps - x0: the (constant) velocity of the straight line from x0 (t = 0) to eps (t = 1)."""
  return eps - x0


def sample_t(rng: jax.Array, n: int, kind: str = "logit_normal", mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """[n] float32 training times in (0, 1).

  "logit_normal": sigmoid(N(mean, std^2)) (SD3): concentrates the steps at intermediate t, where
  the target is hardest to predict (near t = 0 it is -x0 + almost-known noise, near t = 1 it is
  eps - E[x0]); mean > 0 shifts them towards noise. "uniform": U(0, 1); mean and std unused."""
  if kind == "logit_normal":
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (n,), jnp.float32))
  if kind == "uniform":
    return jax.random.uniform(rng, (n,), jnp.float32)
  raise ValueError(f"sample_t: kind={kind!r}; use one of {T_KINDS}.")


def loss(v_pred: jax.Array, x0: jax.Array, eps: jax.Array) -> jax.Array:
  """[B] mean squared error of v_pred against eps - x0 over each example's entries (float32)."""
  err = v_pred.astype(jnp.float32) - velocity_target(x0.astype(jnp.float32), eps.astype(jnp.float32))
  return jnp.mean(jnp.square(err).reshape(err.shape[0], -1), axis=-1)


def drop_words(rng: jax.Array, tokens: jax.Array, p: float, fill: int) -> jax.Array:
  """Word dropout of caption tokens [B, L]: each token independently becomes `fill` (e.g. PAD) with
  probability p; lengths are unchanged. A caption seen with one of its words missing teaches what each
  remaining word says on its own (e.g. a shape without its colour), the behaviour a caption that
  pairs words never seen together in training asks for."""
  if p <= 0:
    return tokens
  return jnp.where(jax.random.bernoulli(rng, p, tokens.shape), jnp.asarray(fill, tokens.dtype), tokens)


def drop_condition(rng: jax.Array, lengths_or_mask: jax.Array, p: float) -> tuple[jax.Array, jax.Array]:
  """Classifier-free guidance dropout: each row independently gets the null condition with
  probability p.

  lengths_or_mask: int valid lengths [B] or a bool / int validity mask [B, L] of the condition
  tokens. Returns (the same with the dropped rows emptied: length 0, or an all-False mask; and
  `dropped`, bool [B], True for the rows that now carry the null condition). A model that masks
  invalid tokens (mmjax.decoders.dit.DiT) then sees no condition token for those rows."""
  x = jnp.asarray(lengths_or_mask)
  dropped = jax.random.bernoulli(rng, p, (x.shape[0],))
  if x.ndim == 1:
    return jnp.where(dropped, jnp.zeros_like(x), x), dropped
  if x.ndim == 2:
    return jnp.where(dropped[:, None], jnp.zeros_like(x), x), dropped
  raise ValueError(f"drop_condition: expected lengths [B] or a mask [B, L]; got shape {x.shape}.")


def guided(v_cond: jax.Array, v_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """Classifier-free guidance: v_uncond + scale (v_cond - v_uncond). scale 1 is the conditional
  velocity, 0 the unconditional one, > 1 extrapolates away from the unconditional one."""
  return v_uncond + scale * (v_cond - v_uncond)
