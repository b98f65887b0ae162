"""Flow matching (mmjax.models.flow_matching), its ODE samplers (mmjax.sample.flow) and the DiT
velocity network (mmjax.decoders.dit), checked against closed forms on a Gaussian target.

Closed forms used throughout. Data x0 ~ N(mu, s^2 I), noise eps ~ N(0, I), independent;
x_t = (1 - t) x0 + t eps, target v = eps - x0. Coordinates are independent, so per coordinate:

  x_t ~ N(m_t, V_t),     m_t = (1 - t) mu,     V_t = (1 - t)^2 s^2 + t^2
  Cov(v, x_t) = t Var(eps) - (1 - t) Var(x0) = t - (1 - t) s^2,     E[v] = -mu
  (v, x_t) jointly Gaussian =>  u(x, t) = E[v | x_t = x] = -mu + (t - (1 - t) s^2) / V_t * (x - m_t)
  irreducible loss  E|v - u(x_t, t)|^2 = Var(v | x_t) = Var(v) - Cov^2 / V_t
                                       = ((1 + s^2) V_t - (t - (1 - t) s^2)^2) / V_t = s^2 / V_t
  averaged over t ~ U(0, 1): V_t = A (t - s^2/A)^2 + s^2/A with A = 1 + s^2, so
      int_0^1 s^2 / V_t dt = s [arctan((A - s^2) / s) + arctan(s)] = s (arctan(1/s) + arctan(s)) = pi s / 2.
  exact ODE solution of dx/dt = u(x, t): the quantile-preserving path x(t) = m_t + sqrt(V_t) z
      (d/dt sqrt(V_t) = (t - (1 - t) s^2) / sqrt(V_t), and z = (x - m_t) / sqrt(V_t)), so from
      x(1) = z (m_1 = 0, V_1 = 1) the solution at t = 0 is x(0) = mu + s z.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from mmjax import layers, sharding
from mmjax.decoders.dit import DiT
from mmjax.models import flow_matching as fm
from mmjax.sample import flow
from mmjax.train.state import ema_update

MODES = ("cross_attention", "joint")


def gaussian_velocity(mu, s):
  """u(x, t) = E[eps - x0 | x_t = x] for x0 ~ N(mu, s^2 I) (module docstring)."""

  def u(x, t):
    t = t.reshape(t.shape + (1,) * (x.ndim - 1))
    v_t = (1 - t) ** 2 * s**2 + t**2
    return -mu + (t - (1 - t) * s**2) / v_t * (x - (1 - t) * mu)

  return u


def random_gaussian(seed):
  """A fresh (mu, s) per seed: not hand-picked values a wrong formula could happen to fit."""
  r = np.random.default_rng(seed)
  return float(r.uniform(-2, 2)), float(r.uniform(0.4, 2.0))


def draw(seed, n, d, mu, s):
  k0, k1 = jax.random.split(jax.random.key(seed))
  x0 = mu + s * jax.random.normal(k0, (n, d))
  eps = jax.random.normal(k1, (n, d))
  return x0, eps


# ---------------------------------------------------------------------------------------------
# flow_matching: conventions and the Gaussian closed forms


def test_path_convention_and_time_sampling():
  """t = 0 is data, t = 1 is noise, and v = eps - x0 is d x_t / dt (finite difference)."""
  x0, eps = draw(0, 4, 3, 0.5, 1.0)
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  np.testing.assert_allclose(fm.interpolate(x0, eps, jnp.zeros(4)), x0)
  np.testing.assert_allclose(fm.interpolate(x0, eps, jnp.ones(4)), eps)
  h = 1e-2
  fd = (fm.interpolate(x0, eps, t + h) - fm.interpolate(x0, eps, t - h)) / (2 * h)
  np.testing.assert_allclose(fd, fm.velocity_target(x0, eps), atol=1e-4)

  u = fm.sample_t(jax.random.key(1), 200_000, "uniform")
  assert 0 <= float(u.min()) and float(u.max()) < 1
  np.testing.assert_allclose([u.mean(), u.var()], [0.5, 1 / 12], atol=3e-3)
  ln = fm.sample_t(jax.random.key(2), 200_000, "logit_normal", mean=0.5, std=0.8)
  logit = jnp.log(ln) - jnp.log1p(-ln)
  np.testing.assert_allclose([logit.mean(), logit.std()], [0.5, 0.8], atol=1e-2)
  with pytest.raises(ValueError, match="kind"):
    fm.sample_t(jax.random.key(0), 3, "cosine")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_field_is_the_conditional_mean(seed):
  """u = E[v | x_t] exactly when the residual v - u(x_t) is uncorrelated with every function of x_t;
  for jointly Gaussian (v, x_t) it is even independent of x_t. Checked by Monte Carlo against
  1, x_t, x_t^2 (a wrong slope or intercept shows up in one of them)."""
  mu, s = random_gaussian(seed)
  u = gaussian_velocity(mu, s)
  x0, eps = draw(seed, 100_000, 2, mu, s)
  for t in (0.1, 0.5, 0.85):
    tt = jnp.full((x0.shape[0],), t)
    xt = fm.interpolate(x0, eps, tt)
    r = fm.velocity_target(x0, eps) - u(xt, tt)
    z = (xt - (1 - t) * mu) / math.sqrt((1 - t) ** 2 * s**2 + t**2)  # standardised x_t
    sd = float(jnp.std(r))
    for g in (jnp.ones_like(z), z, z**2 - 1):
      assert abs(float(jnp.mean(r * g))) < 0.02 * sd * float(jnp.sqrt(jnp.mean(g * g))) + 1e-6, (t, mu, s)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_gaussian_irreducible_loss(seed):
  """fm.loss of the exact field: s^2 / V_t at fixed t, and pi s / 2 averaged over t ~ U(0, 1)."""
  mu, s = random_gaussian(seed)
  u = gaussian_velocity(mu, s)
  n, d = 40_000, 4
  x0, eps = draw(seed, n, d, mu, s)
  for t in (0.05, 0.3, 0.7, 0.95):
    tt = jnp.full((n,), t)
    per_example = fm.loss(u(fm.interpolate(x0, eps, tt), tt), x0, eps)
    assert per_example.shape == (n,)
    expected = s**2 / ((1 - t) ** 2 * s**2 + t**2)
    # (v - u)^2 per coordinate is expected * chi^2_1: relative std sqrt(2 / (n d)) ~ 0.35%.
    np.testing.assert_allclose(float(per_example.mean()), expected, rtol=0.02)
  tt = fm.sample_t(jax.random.key(seed + 100), n, "uniform")
  average = float(fm.loss(u(fm.interpolate(x0, eps, tt), tt), x0, eps).mean())
  np.testing.assert_allclose(average, math.pi * s / 2, rtol=0.03)
  # Any other field does worse (the conditional mean minimises the squared error).
  worse = float(fm.loss(1.1 * u(fm.interpolate(x0, eps, tt), tt), x0, eps).mean())
  assert worse > average


# ---------------------------------------------------------------------------------------------
# ODE samplers


@pytest.mark.parametrize("seed", [6, 7])
def test_euler_maps_noise_to_the_gaussian(seed):
  """Euler with many steps carries N(0, I) at t = 1 to N(mu, s^2 I) at t = 0."""
  mu, s = random_gaussian(seed)
  sampler = jax.jit(functools.partial(flow.sample, gaussian_velocity(mu, s), shape=(8192, 4), steps=200))
  x = sampler(jax.random.key(seed))
  # Standard errors: s / sqrt(32768) for the mean, s / sqrt(65536) for the std (~0.5%, 0.4% of s).
  np.testing.assert_allclose(float(x.mean()), mu, atol=0.03 * s)
  np.testing.assert_allclose(float(x.std()), s, rtol=0.02)


def test_convergence_orders():
  """On the Gaussian field, from a fixed start z the exact end point is mu + s z: doubling the steps
  divides Euler's error by ~2 (first order) and Heun's by ~4 (second order). In float64: at 128
  Heun steps the error (~2e-5) is within reach of float32 rounding accumulated over the steps."""
  mu, s = 0.8, 0.7
  with jax.enable_x64(True):
    v = gaussian_velocity(mu, s)
    z = jnp.array([[-1.5, 0.3, 2.0]], jnp.float64)
    exact = mu + s * z
    errors = {}
    for method in flow.METHODS:
      run = jax.jit(functools.partial(flow.integrate, v, method=method), static_argnames="steps")
      errors[method] = [float(jnp.abs(run(z, steps=n) - exact).max()) for n in (32, 64, 128)]
  euler, heun = (np.array(errors[m]) for m in flow.METHODS)
  ratios_euler, ratios_heun = euler[:-1] / euler[1:], heun[:-1] / heun[1:]  # ~(1.98, 1.99), ~(3.72, 3.87)
  assert np.all((ratios_euler > 1.8) & (ratios_euler < 2.2)), errors
  assert np.all((ratios_heun > 3.5) & (ratios_heun < 4.5)), errors
  assert heun[-1] < euler[-1] / 100, errors


def test_sampler_is_deterministic_per_seed():
  v = gaussian_velocity(0.3, 1.2)
  run = jax.jit(functools.partial(flow.sample, v, shape=(3, 4, 4, 2), steps=5, method="heun"))
  a, b, c = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (3, 4, 4, 2) and not np.allclose(a, c)
  with pytest.raises(ValueError, match="method"):
    flow.integrate(v, jnp.zeros((1, 2)), 3, method="rk4")


def test_guidance():
  """guided(., ., 1) is the conditional velocity, 0 the unconditional one; the sampler's doubled
  batch puts the condition on its first half."""
  r = jax.random.split(jax.random.key(0), 2)
  vc, vu = jax.random.normal(r[0], (3, 5)), jax.random.normal(r[1], (3, 5))
  np.testing.assert_allclose(fm.guided(vc, vu, 1.0), vc, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(fm.guided(vc, vu, 0.0), vu)
  np.testing.assert_allclose(fm.guided(vc, vu, 3.0), vu + 3.0 * (vc - vu), rtol=1e-6)

  cond, uncond = gaussian_velocity(1.0, 0.5), gaussian_velocity(-1.0, 1.5)

  def v_pair(x2, t2):  # first half conditioned, second half null
    b = x2.shape[0] // 2
    return jnp.concatenate([cond(x2[:b], t2[:b]), uncond(x2[b:], t2[b:])])

  key = jax.random.key(3)
  shape = (4, 2)
  one = flow.sample(v_pair, key, shape, steps=8, method="heun", guidance_scale=1.0)
  np.testing.assert_allclose(one, flow.sample(cond, key, shape, steps=8, method="heun"), rtol=1e-5, atol=1e-5)
  zero = flow.sample(v_pair, key, shape, steps=8, guidance_scale=0.0)
  np.testing.assert_allclose(zero, flow.sample(uncond, key, shape, steps=8), rtol=1e-5, atol=1e-5)
  w = 2.5
  mixed = lambda x, t: uncond(x, t) + w * (cond(x, t) - uncond(x, t))
  np.testing.assert_allclose(
    flow.sample(v_pair, key, shape, steps=8, guidance_scale=w), flow.sample(mixed, key, shape, steps=8), rtol=1e-5
  )


def test_drop_condition_and_ema():
  lengths = jnp.array([3, 0, 5, 2])
  mask = jnp.arange(6)[None] < lengths[:, None]
  for p, expect in ((1.0, True), (0.0, False)):
    out, dropped = fm.drop_condition(jax.random.key(0), lengths, p)
    assert dropped.dtype == jnp.bool_ and bool(jnp.all(dropped == expect))
    np.testing.assert_array_equal(out, jnp.zeros_like(lengths) if expect else lengths)
    out, _ = fm.drop_condition(jax.random.key(0), mask, p)
    np.testing.assert_array_equal(out, jnp.zeros_like(mask) if expect else mask)
  _, dropped = fm.drop_condition(jax.random.key(1), jnp.ones(20_000, jnp.int32), 0.1)
  np.testing.assert_allclose(float(dropped.mean()), 0.1, atol=0.01)

  # k updates towards fixed params: ema_k = p + decay^k (ema_0 - p).
  ema, params = {"w": jnp.full((2,), 4.0)}, {"w": jnp.array([1.0, -1.0])}
  for _ in range(5):
    ema = ema_update(ema, params, 0.9)
  np.testing.assert_allclose(ema["w"], params["w"] + 0.9**5 * (4.0 - params["w"]), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# DiT


TEXT_DIM = 12
BATCH, TEXT_LEN = 6, 7  # one input shape for most DiT tests: one compile of the forward per mode


def tiny_dit(mode, **kw):
  return DiT(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=2, time_dim=32, conditioning=mode, **kw)


def dit_inputs(seed=0, b=BATCH, length=TEXT_LEN):
  r = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(r[0], (b, 8, 8, 3))
  t = jax.random.uniform(r[1], (b,))
  text = jax.random.normal(r[2], (b, length, TEXT_DIM))
  return x, t, text


def perturbed(variables, seed=0, scale=0.3):
  """Init parameters plus noise: every gate and the final layer become non-zero, so that the
  output depends on everything (at init it is exactly 0 and would hide any masking bug)."""
  r = np.random.default_rng(seed)  # numpy: one jax RNG program per leaf shape would cost seconds of compiles
  return jax.tree.map(lambda x: x + jnp.asarray(scale * r.standard_normal(x.shape), x.dtype), variables)


@functools.lru_cache(maxsize=None)
def dit_setup(mode):
  """(model, init variables, perturbed variables, jitted apply), shared by the tests of one mode.
  The parameter shapes depend on the text width but not on the batch or the text length."""
  model = tiny_dit(mode)
  x, t, text = dit_inputs(b=2)
  variables = jax.jit(model.init)(jax.random.key(1), x, t, text, jnp.array([3, TEXT_LEN]))
  return model, variables, perturbed(variables), jax.jit(model.apply)


@pytest.mark.parametrize("mode", MODES)
def test_dit_starts_at_zero_with_identity_blocks(mode):
  """adaLN-Zero: the output is exactly 0 at init and every block is exactly the identity (all
  shifts, scales and gates are 0, so each residual branch adds exactly 0)."""
  model, variables, _, _ = dit_setup(mode)
  x, t, text = dit_inputs(b=2)
  lengths = jnp.array([3, TEXT_LEN])
  y, state = jax.jit(functools.partial(model.apply, capture_intermediates=True))(variables, x, t, text, lengths)
  assert y.shape == x.shape
  np.testing.assert_array_equal(y, jnp.zeros_like(x))
  inter = state["intermediates"]
  outs = [inter[f"block_{i}"]["__call__"][0] for i in range(2)]
  for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
    np.testing.assert_array_equal(a, b)

  # Each block is the identity: block 0 returns its inputs (the embedded patches plus positions,
  # and in joint mode the normed text tokens) and every later block returns what it was given.
  tokens = inter["patch_embed"]["__call__"][0] + jnp.asarray(layers.sincos_2d(4, 4, 32))[None]
  inputs = (tokens, inter["text_norm"]["__call__"][0]) if mode == "joint" else tokens
  for a, b in zip(jax.tree.leaves(inputs), jax.tree.leaves(outs[0])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_dit_padded_text_is_never_seen(mode):
  """Padded text tokens (any content, any amount of padding) do not change the output, while the
  valid ones do. Variants are stacked in one batch (rows are independent)."""
  model, _, variables, apply = dit_setup(mode)
  x, t, text = dit_inputs(b=2)
  lengths = jnp.array([3, 5])
  valid = (jnp.arange(TEXT_LEN) < lengths[:, None])[..., None]
  garbage = jnp.where(valid, text, 100.0 * jax.random.normal(jax.random.key(9), text.shape))
  changed = text.at[:, 0].add(1.0)
  tile = lambda a: jnp.concatenate([a] * 3)
  out = apply(variables, tile(x), tile(t), jnp.concatenate([text, garbage, changed]), tile(lengths))
  y, y_garbage, y_changed = out[:2], out[2:4], out[4:]
  np.testing.assert_allclose(y_garbage, y, rtol=1e-5, atol=1e-5)
  # Less padding: a different input shape, so a different program; compare two batch-2 runs (float32
  # rounding differs between programs and the random-weight network amplifies it).
  y2 = apply(variables, x, t, text, lengths)
  np.testing.assert_allclose(apply(variables, x, t, text[:, :5], lengths), y2, atol=1e-5 * float(jnp.abs(y2).max()))
  assert float(jnp.abs(y_changed - y).reshape(2, -1).max(-1).min()) > 1e-3


@pytest.mark.parametrize("mode", MODES)
def test_dit_dropped_rows_see_the_null_condition(mode):
  """drop_condition rows run the model with no text: their output equals the model run with an
  empty text (length 0, whatever the token content), and differs from the conditioned output."""
  model, _, variables, apply = dit_setup(mode)
  x, t, text = dit_inputs()
  lengths = jnp.array([2, 7, 4, 1, 5, 3])
  kept = apply(variables, x, t, text, lengths)

  null_lengths, dropped = fm.drop_condition(jax.random.key(0), lengths, 1.0)
  assert bool(dropped.all())
  out = apply(variables, x, t, text, null_lengths)
  other_text = jax.random.normal(jax.random.key(5), text.shape)
  empty = apply(variables, x, t, other_text, jnp.zeros(BATCH, jnp.int32))
  np.testing.assert_allclose(out, empty, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(out - kept).reshape(BATCH, -1).max(-1).min()) > 1e-3  # every row changed

  # Mixed batch: each row follows its own drop decision.
  mixed_lengths, dropped = fm.drop_condition(jax.random.key(2), lengths, 0.5)
  assert 0 < int(dropped.sum()) < BATCH, "pick a key that drops some rows and keeps others"
  mixed = apply(variables, x, t, text, mixed_lengths)
  np.testing.assert_allclose(mixed[dropped], empty[dropped], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(mixed[~dropped], kept[~dropped], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("posemb", ["learn", "sincos2d"])
def test_dit_logical_axes(mode, posemb):
  """Every parameter is boxed with logical names the rules table knows; no kernel is replicated on
  every dim."""
  model = tiny_dit(mode, posemb=posemb)
  x, t, text = dit_inputs(b=2)
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, text, jnp.array([3, 7]))
  boxed = jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
  assert boxed and all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
  known = {name for name, _ in sharding.DEFAULT_RULES}
  specs = nn.get_partition_spec(variables)["params"]
  flat = jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda s: isinstance(s, P))
  for path, spec in flat:
    names = [a for a in spec if a is not None]
    assert set(names) <= known, (jax.tree_util.keystr(path), spec)
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      assert names, (jax.tree_util.keystr(path), spec)


@pytest.mark.parametrize("mode", MODES)
def test_dit_training_lowers_the_loss(mode):
  """A jitted flow-matching step (logit-normal t, 10% condition dropout, EMA) on two fixed 8x8
  images keyed by two texts lowers the loss on a fixed evaluation set within 30 steps; the trained
  model then samples with guidance."""
  yy, xx = np.mgrid[:8, :8] / 7.0
  images = jnp.asarray(
    np.stack(
      [
        np.stack([xx, 1 - xx, 0 * xx + 0.5], -1),  # horizontal ramps
        np.stack([(yy > 0.5) * 1.0, yy, np.ones_like(yy)], -1) * 2 - 1,  # vertical step
      ]
    ),
    jnp.float32,
  )
  texts = jax.random.normal(jax.random.key(0), (2, 4, TEXT_DIM))
  text_len = jnp.array([2, 4])
  reps = 8
  x0, text, lengths = (jnp.repeat(a, reps, axis=0) for a in (images, texts, text_len))
  b = x0.shape[0]
  model, variables, _, _ = dit_setup(mode)
  params = variables["params"]
  opt = optax.adam(3e-3)

  def batch_loss(params, x0, eps, t, lengths):
    v = model.apply({"params": params}, fm.interpolate(x0, eps, t), t, text, lengths)
    return fm.loss(v, x0, eps).mean()

  # Fixed evaluation draws: the same (eps, t) before and after, so only the parameters differ. The
  # step reports the evaluation loss of the parameters it starts from (one compiled program).
  k_eps, k_t = jax.random.split(jax.random.key(7))
  eval_eps, eval_t = jax.random.normal(k_eps, (4 * b,) + x0.shape[1:]), fm.sample_t(k_t, 4 * b)
  tile = lambda a: jnp.concatenate([a] * 4)

  @jax.jit
  def step(state, rng):
    params, opt_state, ema = state
    evaluation = fm.loss(
      model.apply({"params": params}, fm.interpolate(tile(x0), eval_eps, eval_t), eval_t, tile(text), tile(lengths)),
      tile(x0),
      eval_eps,
    ).mean()
    r_eps, r_t, r_drop = jax.random.split(rng, 3)
    eps = jax.random.normal(r_eps, x0.shape)
    t = fm.sample_t(r_t, b)
    dropped_lengths, _ = fm.drop_condition(r_drop, lengths, 0.1)
    value, grads = jax.value_and_grad(batch_loss)(params, x0, eps, t, dropped_lengths)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state, ema_update(ema, params, 0.9)), evaluation

  state = (params, opt.init(params), params)
  evaluations = []
  for i in range(31):  # 30 updates; the 31st call evaluates the result
    state, evaluation = step(state, jax.random.key(100 + i))
    evaluations.append(float(evaluation))
  before, after = evaluations[0], evaluations[-1]
  assert after < 0.7 * before, evaluations

  def v_pair(x2, t2):  # rows [:2] conditioned on the two texts, rows [2:] on the null condition
    null = jnp.concatenate([text_len, jnp.zeros_like(text_len)])
    return model.apply({"params": state[2]}, x2, t2, jnp.concatenate([texts, texts]), null)

  sampler = jax.jit(lambda k: flow.sample(v_pair, k, (2, 8, 8, 3), steps=4, method="euler", guidance_scale=2.0))
  samples = sampler(jax.random.key(3))
  assert samples.shape == (2, 8, 8, 3) and bool(jnp.all(jnp.isfinite(samples)))
