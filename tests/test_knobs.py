"""Memory / throughput knobs give the same results as without them (tiny model, CPU, 1 device):
gradient accumulation, rematerialisation, scanning over layers, bf16 compute."""

import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config_files
from mmjax.models import build_model, vlm
from mmjax.sample.generate import GenerateOptions, generate
from mmjax.train import state as state_lib, step as step_lib
from tests.conftest import CONFIGS
from tests.sharding_entry import V, batches

ARGS = ("image", "prompt", "prompt_len", "target_in")


def config(**model):
  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  c.model.attention_implementation = "xla"
  c.model.decoder.depth = 2  # two layers: scanning and remat see a real stack
  c.model.update(model)
  return c


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def rel_err(a, b):
  a, b = flat(a), flat(b)
  assert np.isfinite(a).all() and np.isfinite(b).all()  # NaN never passes
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def batch():
  return batches(config(), n=1, b=8)[0]


@pytest.fixture(scope="module")
def base(batch):
  c = config()
  model = build_model(c.model, V)
  params = nn.meta.unbox(model.init(jax.random.key(0), *(batch[k][:1] for k in ARGS))["params"])
  grads, metrics = step_lib.grads_and_metrics(model, params, batch)
  return c, model, params, grads, metrics


def test_grad_accumulation_equals_full_batch(base, batch):
  c, model, params, grads, metrics = base
  for k in (2, 4):
    g, m = jax.jit(lambda p, b: step_lib.grads_and_metrics(model, p, b, k))(params, batch)
    assert rel_err(g, grads) < 1e-5
    np.testing.assert_allclose(m["loss"], metrics["loss"], rtol=1e-5)
  # Through the jitted, sharded train step: 2 steps with grad_accum_steps=2 == plain steps.
  outs = []
  for accum in (1, 2):
    c2 = config()
    c2.grad_accum_steps = accum
    setup = state_lib.make_setup(c2, V, devices=jax.devices()[:1])
    state = state_lib.init_state(setup, jax.random.key(0))
    step = step_lib.make_train_step(setup, batch)
    with setup.context():
      for _ in range(2):
        state, m = step(state, {k: batch[k] for k in vlm.BATCH_KEYS})
    outs.append((jax.device_get(state.params), float(m["loss"])))
  assert rel_err(outs[1][0], outs[0][0]) < 1e-5
  np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-5)
  with pytest.raises(ValueError, match="grad_accum_steps=3"):
    step_lib.grads_and_metrics(model, params, batch, 3)


@pytest.mark.parametrize("policy", ["dots_saveable"])  # "full" runs in the scan test
def test_remat_same_params_and_gradients(base, batch, policy):
  c, model, params, grads, metrics = base
  m2 = build_model(config(remat=policy).model, V)
  p2 = nn.meta.unbox(m2.init(jax.random.key(0), *(batch[k][:1] for k in ARGS))["params"])
  assert jax.tree.structure(p2) == jax.tree.structure(params)  # names unchanged
  g2, mm = jax.jit(lambda p, b: step_lib.grads_and_metrics(m2, p, b))(params, batch)
  assert rel_err(g2, grads) < 1e-6
  np.testing.assert_allclose(mm["loss"], metrics["loss"], rtol=1e-6)


def test_unknown_remat_policy_is_an_error(batch):
  m = build_model(config(remat="bogus").model, V)
  with pytest.raises(ValueError, match="model.remat='bogus'"):
    m.init(jax.random.key(0), *(batch[k][:1] for k in ARGS))


def to_scanned(tree):
  """Unscanned params -> scanned layout: `<p>_<i>` children stacked under `<p>s/layers/block`."""
  if not isinstance(tree, dict):
    return tree
  out, groups = {}, {}
  for k, v in tree.items():
    m = re.fullmatch(r"(block|blocks|fuse)_(\d+)", k)
    if m:
      groups.setdefault(m.group(1), {})[int(m.group(2))] = v
    else:
      out[k] = to_scanned(v)
  for prefix, layers in groups.items():
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
    out[prefix if prefix.endswith("s") else prefix + "s"] = {"layers": {"block": stacked}}
  return out


def test_scan_layers_same_function_and_layer_axis(base, batch):
  c, model, params, grads, metrics = base
  cs = config(scan_layers=True, remat="full")
  ms = build_model(cs.model, V)
  boxed = ms.init(jax.random.key(0), *(batch[k][:1] for k in ARGS))["params"]
  specs = nn.get_partition_spec(boxed)
  scanned = to_scanned(params)
  assert jax.tree.structure(nn.meta.unbox(boxed)) == jax.tree.structure(scanned)
  k = specs["decoder"]["blocks"]["layers"]["block"]["mlp"]["wi"]["kernel"]
  assert tuple(k) == ("layers", "embed", "mlp")
  q = specs["image_encoder"]["blocks"]["layers"]["block"]["self_attention"]["query"]["kernel"]
  assert tuple(q) == ("layers", "embed", "heads", "head_dim")
  # The rules table puts the stacked layer axis nowhere ("layers" -> None), embed on fsdp, mlp on tensor.
  mesh_spec = nn.logical_to_mesh(specs, state_lib.sharding.rules_from_config(()))
  assert tuple(mesh_spec["decoder"]["blocks"]["layers"]["block"]["mlp"]["wi"]["kernel"]) == (None, "fsdp", "tensor")
  gs, ms_metrics = jax.jit(lambda p, b: step_lib.grads_and_metrics(ms, p, b))(scanned, batch)
  np.testing.assert_allclose(ms_metrics["loss"], metrics["loss"], rtol=1e-5)
  assert rel_err(gs, to_scanned(grads)) < 1e-5
  # KV-cache decoding through the scanned decoder (cache stacked on axis 1) gives the same tokens.
  opts = GenerateOptions(max_new_tokens=5, bos_id=1, eos_id=2, pad_id=0)
  args = (batch["image"][:3], batch["prompt"][:3], batch["prompt_len"][:3], jax.random.key(0), opts)
  ref = jax.jit(lambda p: generate(model, p, *args[:4], opts))(params)
  out = jax.jit(lambda p: generate(ms, p, *args[:4], opts))(scanned)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


def test_bf16_compute_fp32_params(base, batch):
  c, model, params, grads, metrics = base
  mb = build_model(config(dtype="bfloat16").model, V)
  pb = nn.meta.unbox(mb.init(jax.random.key(0), *(batch[k][:1] for k in ARGS))["params"])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(pb))  # master params stay fp32
  g, m = jax.jit(lambda p, b: step_lib.grads_and_metrics(mb, p, b))(params, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g))
  assert abs(float(m["loss"]) - float(metrics["loss"])) < 0.05 * float(metrics["loss"])
  assert rel_err(g, grads) < 0.1
