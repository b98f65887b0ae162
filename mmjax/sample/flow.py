"""ODE samplers for flow-matching models: noise (t = 1) -> data (t = 0).

A velocity function `v(x, t)` takes x [B, ...] and t [B] (every row at the same time) and returns
dx/dt with x's shape (mmjax.models.flow_matching: x_t = (1 - t) x0 + t eps, so v ~ eps - x0).

    x0 = sample(v, rng, (B, H, W, C), steps=50, method="heun")

`steps` is a Python int (static under jit); the loop is a lax.fori_loop, so the compiled program
holds one step whatever `steps` is. The time grid is uniform, t_k = 1 - k / steps, and the result
is a deterministic function of the seed (the only randomness is the starting noise).

  euler  x_{k+1} = x_k + h v(x_k, t_k), h = t_{k+1} - t_k < 0: one evaluation per step, global
         error O(1 / steps).
  heun   the trapezoidal corrector of the Euler predictor x' = x_k + h v(x_k, t_k):
         x_{k+1} = x_k + h / 2 (v(x_k, t_k) + v(x', t_{k+1})): two evaluations per step, global error
         O(1 / steps^2).

Classifier-free guidance: with `guidance_scale` set, `v` is called once per evaluation on the doubled
batch [x; x] (times [t; t]) and must return [v_cond; v_uncond]: the velocities of its first B rows
under the condition, of its last B rows under the null condition. The sampler steps with
flow_matching.guided(v_cond, v_uncond, guidance_scale). With a DiT, for example:

    def v(x2, t2):  # text [B, L, D], text_len [B]
      return model.apply(params, x2, t2, jnp.concatenate([text, text]),
                         jnp.concatenate([text_len, jnp.zeros_like(text_len)]))
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from mmjax.models import flow_matching

METHODS = ("euler", "heun")
Velocity = Callable[[jax.Array, jax.Array], jax.Array]


def guided_velocity(v_pair: Velocity, scale: float | jax.Array) -> Velocity:
  """v(x, t) that evaluates `v_pair` on the doubled batch [x; x] and returns the guided velocity
  (see the module docstring for what v_pair's two halves must be)."""

  def v(x, t):
    b = x.shape[0]
    out = v_pair(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    return flow_matching.guided(out[:b], out[b:], scale)

  return v


def integrate(
  v: Velocity,
  x1: jax.Array,
  steps: int,
  method: str = "euler",
  t_start: float = 1.0,
  t_end: float = 0.0,
) -> jax.Array:
  """Solves dx/dt = v(x, t) from x(t_start) = x1 to t_end with `steps` uniform steps."""
  if method not in METHODS:
    raise ValueError(f"flow sampler: method={method!r}; use one of {METHODS}.")
  steps = int(steps)
  if steps < 1:
    raise ValueError(f"flow sampler: steps={steps} must be >= 1.")
  b = x1.shape[0]
  h = (t_end - t_start) / steps
  # At least float32 times: a bf16 grid could not even tell neighbouring steps apart.
  t_dtype = jnp.promote_types(x1.dtype, jnp.float32)

  def time(k):
    return jnp.full((b,), t_start + k * h, t_dtype)

  def step(k, x):
    t = time(k)
    d = v(x, t).astype(x.dtype)
    if method == "euler":
      return x + h * d
    t_next = time(k + 1)
    d_next = v(x + h * d, t_next).astype(x.dtype)
    return x + (0.5 * h) * (d + d_next)

  return jax.lax.fori_loop(0, steps, step, x1)


def sample(
  v: Velocity,
  rng: jax.Array,
  shape: tuple[int, ...],
  *,
  steps: int,
  method: str = "euler",
  guidance_scale: float | jax.Array | None = None,
  dtype=jnp.float32,
) -> jax.Array:
  """Data samples [shape] from noise N(0, I) drawn with `rng`, integrated from t = 1 to t = 0.

  guidance_scale None: v is the (conditional) velocity, called on B rows. Otherwise v is called on
  2B rows and must return [v_cond; v_uncond] (module docstring)."""
  x1 = jax.random.normal(rng, shape, dtype)
  if guidance_scale is not None:
    v = guided_velocity(v, guidance_scale)
  return integrate(v, x1, steps, method)
