"""Subprocess entry point for tests/test_sharding.py: sharding strategies on 8 simulated CPU devices.

XLA_FLAGS must be set before JAX initialises, so this runs as its own process:
  python tests/sharding_entry.py OUT.json [strategy ...]
For each strategy (a mesh over the 8 devices) it trains the tiny model 3 steps on fixed random
batches and compares with the same 3 steps on 1 device; it records per-device shard shapes of the
parameters and optimizer state and greedy KV-cache samples. Results go to OUT.json; the asserts
live in the test.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mmjax import config_files  # noqa: E402
from mmjax.models import vlm  # noqa: E402
from mmjax.sample.generate import GenerateOptions, make_generate_fn  # noqa: E402
from mmjax.train import batches as batches_lib, state as state_lib, step as step_lib  # noqa: E402

V = 64
STRATEGIES = {
  "data": dict(data=8, fsdp=1, tensor=1),
  "fsdp": dict(data=1, fsdp=8, tensor=1),
  "tensor": dict(data=4, fsdp=1, tensor=2),
  "mixed": dict(data=2, fsdp=2, tensor=2),
}


def tiny_config(mesh):
  c = config_files.load(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  c.model.attention_implementation = "xla"
  c.mesh = ml_collections.ConfigDict(dict(mesh, sequence=1))
  return c


def batches(config, n=3, b=8, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    x = batches_lib.dummy_batch(config, b)
    s, lp, lt = config.data.image_size, config.data.max_prompt_len, config.data.max_target_len
    x["image"] = rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8)
    x["prompt"] = rng.integers(4, V, (b, lp)).astype(np.int32)
    x["prompt_len"] = rng.integers(1, lp + 1, (b,)).astype(np.int32)
    x["prompt"][np.arange(lp)[None] >= x["prompt_len"][:, None]] = 0
    x["target_in"] = rng.integers(4, V, (b, lt)).astype(np.int32)
    x["target_out"] = rng.integers(4, V, (b, lt)).astype(np.int32)
    x["target_mask"] = (np.arange(lt)[None] < rng.integers(2, lt, (b, 1))).astype(np.float32)
    out.append(x)
  return out


def train(mesh, devices, data):
  config = tiny_config(mesh)
  setup = state_lib.make_setup(config, V, devices=devices)
  state = state_lib.init_state(setup, jax.random.key(0))
  step = step_lib.make_train_step(setup, data[0])
  losses = []
  with setup.context():
    for b in data:
      sh = setup.batch_sharding(b)
      state, m = step(state, {k: jax.device_put(b[k], sh[k]) for k in vlm.BATCH_KEYS})
      losses.append(float(m["loss"]))
  return setup, state, losses


def shard_report(setup, state):
  """Per leaf: global shape, the shape of one device's shard, and the shape the spec predicts."""
  sizes = dict(zip(setup.mesh.axis_names, setup.mesh.devices.shape))
  rows = {}

  def visit(prefix, tree, shardings):
    for (path, leaf), s in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
      expect = []
      for dim, axes in zip(leaf.shape, tuple(s.spec) + (None,) * (leaf.ndim - len(s.spec))):
        axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        expect.append(dim // int(np.prod([sizes[a] for a in axes])) if axes else dim)
      rows[prefix + jax.tree_util.keystr(path)] = dict(
        shape=list(leaf.shape),
        shard=list(leaf.addressable_shards[0].data.shape),
        expected=expect,
        spec=[None if a is None else (list(a) if isinstance(a, tuple) else a) for a in s.spec],
        n_shards=len(leaf.addressable_shards),
      )

  visit("params", state.params, setup.state_sharding.params)
  # Adam's first moment (mu) mirrors the params tree: it must be sharded like them.
  adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")][0]
  adam_sh = [
    s for s in jax.tree.leaves(setup.state_sharding.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")
  ][0]
  visit("mu", adam.mu, adam_sh.mu)
  return rows


def rel_err(a, b):
  a = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(a)])
  b = np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(b)])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(out_path, names):
  assert len(jax.devices()) == 8, jax.devices()
  data = batches(tiny_config(STRATEGIES["data"]))
  ref_setup, ref_state, ref_losses = train(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1], data)
  ref_params = jax.device_get(ref_state.params)
  opts = GenerateOptions(max_new_tokens=6, bos_id=1, eos_id=2, pad_id=0)
  sample = data[0]
  ref_tokens = make_generate_fn(ref_setup, opts)(
    ref_params, sample["image"], sample["prompt"], sample["prompt_len"], jax.random.key(1)
  )
  results = {"reference": dict(losses=ref_losses, tokens=np.asarray(ref_tokens).tolist())}
  bad = tiny_config(STRATEGIES["data"])
  bad.batch_size = 12  # 12 examples cannot be split over 8 data shards
  try:
    state_lib.make_setup(bad, V)
    results["indivisible_error"] = None
  except ValueError as e:
    results["indivisible_error"] = str(e)
  for name in names:
    setup, state, losses = train(STRATEGIES[name], jax.devices(), data)
    res = dict(
      losses=losses,
      param_rel_err=rel_err(jax.device_get(state.params), ref_params),
      shards=shard_report(setup, state),
      mesh=dict(zip(setup.mesh.axis_names, setup.mesh.devices.shape)),
    )
    if name == "mixed":  # sampling (KV-cache decoding) with the reference params placed on this mesh
      params = jax.device_put(ref_params, setup.state_sharding.params)
      tokens = make_generate_fn(setup, opts)(
        params, sample["image"], sample["prompt"], sample["prompt_len"], jax.random.key(1)
      )
      res["tokens"] = np.asarray(tokens).tolist()
    results[name] = res
    print(name, losses, res["param_rel_err"], flush=True)
  with open(out_path, "w") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:] or list(STRATEGIES))
