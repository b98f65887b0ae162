"""LoRA adapters as a parameter-tree transform (mmjax.models.lora) on a tiny model of mmjax Dense layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from jax.sharding import PartitionSpec as P

from mmjax import sharding
from mmjax.layers import Dense
from mmjax.models import lora, transfer

TARGETS = ("query", "value", "out", "out_nobias", "wi")
# Plain arrays carry no logical names: kernels of 3+ dims without a bias need their input dims.
IN_NDIMS = {"query": 1, "out_nobias": 2}


class Tiny(nn.Module):
  """x [B, S, 6] -> [B, S, 5]: multi-dim features (heads, head_dim), in_axes of length 2, with and
  without bias."""

  @nn.compact
  def __call__(self, x):
    q = Dense((2, 3), ("embed",), ("heads", "head_dim"), use_bias=False, name="query")(x)
    v = Dense((2, 3), ("embed",), ("heads", "head_dim"), name="value")(x)
    h = q * v
    o = Dense(6, ("heads", "head_dim"), ("embed",), name="out")(h)
    o = o + Dense(6, ("heads", "head_dim"), ("embed",), use_bias=False, name="out_nobias")(h)
    return Dense(5, ("embed",), ("mlp",), name="wi")(o)


class _Step(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    h = Dense((2, 3), ("embed",), ("heads", "head_dim"), use_bias=False, name="query")(x)
    return x + Dense(6, ("heads", "head_dim"), ("embed",), use_bias=False, name="out")(jnp.tanh(h)), None


class Scanned(nn.Module):
  """Three layers stacked by nn.scan on a leading "layers" axis, as mmjax.layers.ScannedBlocks does."""

  @nn.compact
  def __call__(self, x):
    scan = nn.scan(
      _Step,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=3,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return scan(name="layers")(x, None)[0]


def inputs(seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(2, 4, 6)), jnp.float32)


@functools.cache
def _jitted(cls):
  # One compiled init / apply per model class: op-by-op dispatch would compile every small op.
  return jax.jit(cls().init), jax.jit(cls().apply)


def boxed_params(model=None, seed=0):
  return _jitted(type(model or Tiny()))[0](jax.random.key(seed), inputs())["params"]


def apply(model, params, x):
  return _jitted(type(model))[1]({"params": params}, x)


def randomize_b(params, seed=1):
  """Nonzero B everywhere (fresh adapters have B = 0)."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  for k, v in flat.items():
    if k[-1] == "lora_b":
      flat[k] = jnp.asarray(rng.normal(size=v.shape), v.dtype)
  return traverse_util.unflatten_dict(flat)


def rel_err(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / np.linalg.norm(b))


def test_patterns():
  path = "decoder/block_0/attn/query"
  assert lora.matches("query", path) and lora.matches("q*", path) and not lora.matches("attn", path)
  assert lora.matches("decoder/**/query", path) and lora.matches("decoder/**", path)
  assert lora.matches("**/attn/query", path) and lora.matches("decoder/*/attn/query", path)
  assert lora.matches("decoder/block_0/attn/**/query", path)  # ** may match no segment
  assert not lora.matches("attn/query", path)  # with '/', anchored at the root
  assert not lora.matches("encoder/**/query", path) and not lora.matches("decoder/*/query", path)


def test_fresh_adapters_leave_outputs_unchanged():
  model, x = Tiny(), inputs()
  base = nn.meta.unbox(boxed_params(model))
  adapted = lora.add_adapters(base, TARGETS, rank=2, alpha=4.0, rng=jax.random.key(1), in_ndims=IN_NDIMS)
  assert lora.adapted_modules(adapted) == sorted(TARGETS)
  np.testing.assert_array_equal(apply(model, adapted, x), apply(model, base, x))
  q = adapted["query"]
  assert q["lora_a"].shape == (6, 2) and q["lora_b"].shape == (2, 2, 3) and float(q["lora_scale"]) == 2.0
  assert adapted["out"]["lora_a"].shape == (2, 3, 2) and adapted["out"]["lora_b"].shape == (2, 6)
  # Kaiming-uniform A: |A| <= 1/sqrt(fan_in), not all zero.
  a = np.asarray(adapted["out"]["lora_a"])
  assert 0 < np.abs(a).max() <= 1 / np.sqrt(6) and not np.any(np.asarray(q["lora_b"]))


def _dense_np(x, p, n_in):
  """x W + b + s (x A) B in float64, contracting x's last n_in dims."""
  f = lambda k: np.asarray(p[k], np.float64)
  y = np.tensordot(x, f("kernel"), axes=n_in)
  if "bias" in p:
    y = y + f("bias")
  if "lora_a" in p:
    y = y + f("lora_scale") * np.tensordot(np.tensordot(x, f("lora_a"), axes=n_in), f("lora_b"), axes=1)
  return y


def _tiny_np(params, x):
  x = np.asarray(x, np.float64)
  h = _dense_np(x, params["query"], 1) * _dense_np(x, params["value"], 1)
  o = _dense_np(h, params["out"], 2) + _dense_np(h, params["out_nobias"], 2)
  return _dense_np(o, params["wi"], 1)


def test_adapted_output_matches_float64_reference():
  model, x = Tiny(), inputs()
  params = lora.add_adapters(nn.meta.unbox(boxed_params(model)), TARGETS, 3, 1.5, jax.random.key(2), in_ndims=IN_NDIMS)
  params = randomize_b(params)
  want = _tiny_np(params, x)
  got = apply(model, params, x)
  assert rel_err(got, want) < 1e-5
  # merge folds them into the kernels; without them the output differs.
  assert rel_err(_tiny_np(lora.merge(params), x), want) < 1e-6
  base = {k: {n: v for n, v in p.items() if not n.startswith("lora_")} for k, p in params.items()}
  assert rel_err(_tiny_np(base, x), want) > 1e-2


@pytest.mark.parametrize("boxed", [False, True])
def test_merge_gives_the_adapted_outputs(boxed):
  model, x = Tiny(), inputs()
  params = boxed_params(model)
  params = params if boxed else nn.meta.unbox(params)
  params = lora.add_adapters(params, TARGETS, 2, 8.0, jax.random.key(3), in_ndims=None if boxed else IN_NDIMS)
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(4)
  for k, v in flat.items():
    if k[-1] == "lora_b":
      val = jnp.asarray(rng.normal(size=nn.meta.unbox(v).shape), jnp.float32)
      flat[k] = v.replace_boxed(val) if boxed else val
  params = traverse_util.unflatten_dict(flat)
  merged = lora.merge(params)
  flat_merged = traverse_util.flatten_dict(merged)
  assert not any(k[-1].startswith("lora_") for k in flat_merged)
  assert set(flat_merged) == {k for k in flat if not k[-1].startswith("lora_")}
  if boxed:  # the merged kernel keeps its box and logical names
    assert nn.get_partition_spec(merged)["out"]["kernel"] == P("heads", "head_dim", "embed")
  adapted_y = apply(model, nn.meta.unbox(params), x)
  merged_y = apply(model, nn.meta.unbox(merged), x)
  assert rel_err(merged_y, adapted_y) < 1e-6
  assert rel_err(adapted_y, apply(model, nn.meta.unbox(boxed_params(model)), x)) > 1e-2


def test_boxed_adapters_carry_logical_names():
  model = Tiny()
  # As the trainer's init does it: inside eval_shape, on model.init's boxed params.
  abstract = jax.eval_shape(
    lambda r: lora.add_adapters(model.init(r, inputs())["params"], TARGETS, 4, 4.0, jax.random.fold_in(r, 1)),
    jax.random.key(0),
  )
  specs = nn.get_partition_spec(abstract)
  assert specs["query"]["lora_a"] == P("embed", "lora_rank")
  assert specs["query"]["lora_b"] == P("lora_rank", "heads", "head_dim")
  assert specs["out"]["lora_a"] == P("heads", "head_dim", "lora_rank")
  assert specs["out"]["lora_b"] == P("lora_rank", "embed")
  assert specs["out"]["lora_scale"] == P() and specs["out"]["kernel"] == P("heads", "head_dim", "embed")
  assert specs["wi"]["lora_a"] == P("embed", "lora_rank") and specs["wi"]["lora_b"] == P("lora_rank", "mlp")
  # The rules table places them: A's input axis like the kernel's, the rank axis replicated.
  mesh = jax.make_mesh((1, 1, 1, 1), ("data", "fsdp", "sequence", "tensor"))
  rules = sharding.rules_from_config(None)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  assert shardings["query"]["lora_a"].spec == P("fsdp", None)
  assert shardings["query"]["lora_b"].spec == P(None, "tensor", None)
  # Boxed and plain params get the same adapter values from the same rng.
  boxed = lora.add_adapters(boxed_params(model), TARGETS, 4, 4.0, jax.random.key(5))
  plain = lora.add_adapters(nn.meta.unbox(boxed_params(model)), TARGETS, 4, 4.0, jax.random.key(5), in_ndims=IN_NDIMS)
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(boxed), plain)


def test_scanned_layers_get_stacked_adapters():
  model, x = Scanned(), inputs()
  params = lora.add_adapters(boxed_params(model), ("query", "out"), 2, 2.0, jax.random.key(6))
  step = params["layers"]
  specs = nn.get_partition_spec(params)["layers"]
  assert step["query"]["lora_a"].value.shape == (3, 6, 2) and step["out"]["lora_a"].value.shape == (3, 2, 3, 2)
  assert step["out"]["lora_b"].value.shape == (3, 2, 6) and step["out"]["lora_scale"].value.shape == (3,)
  assert specs["out"]["lora_a"] == P("layers", "heads", "head_dim", "lora_rank")
  assert specs["query"]["lora_b"] == P("layers", "lora_rank", "heads", "head_dim")
  assert specs["out"]["lora_scale"] == P("layers")
  plain = randomize_b(nn.meta.unbox(params))
  adapted_y = apply(model, plain, x)
  merged = lora.merge(plain)
  assert "lora_a" not in merged["layers"]["out"]
  assert rel_err(apply(model, merged, x), adapted_y) < 1e-6
  assert rel_err(adapted_y, apply(model, nn.meta.unbox(boxed_params(model)), x)) > 1e-3


def test_training_step_updates_only_the_adapters():
  model, x = Tiny(), inputs()
  params = lora.add_adapters(boxed_params(model), TARGETS, 2, 2.0, jax.random.key(7))
  tx = lora.train_adapters_only(optax.adamw(1e-2, weight_decay=0.1))
  tx.init(params)  # boxed params, as the trainer's init passes them
  params = randomize_b(nn.meta.unbox(params))  # so that A gets a gradient too
  frozen, trainable = transfer.FROZEN, transfer.TRAINABLE
  want = {"kernel": frozen, "bias": frozen, "lora_a": trainable, "lora_b": trainable, "lora_scale": frozen}
  assert lora.trainable_labels(params)["out"] == want
  opt_state = tx.init(params)
  loss = lambda p: jnp.mean(apply(model, p, x) ** 2)
  updates, opt_state = tx.update(jax.grad(loss)(params), opt_state, params)
  new = optax.apply_updates(params, updates)
  old_flat, new_flat = traverse_util.flatten_dict(params), traverse_util.flatten_dict(new)
  for k, v in old_flat.items():
    if k[-1] in ("lora_a", "lora_b"):
      assert np.any(np.asarray(new_flat[k]) != np.asarray(v)), k
    else:
      np.testing.assert_array_equal(new_flat[k], v, err_msg=str(k))


def test_init_from_a_base_run_keeps_the_adapters():
  base = nn.meta.unbox(boxed_params(seed=1))
  params = randomize_b(nn.meta.unbox(lora.add_adapters(boxed_params(seed=0), ("query",), 2, 2.0, jax.random.key(8))))
  out = transfer.copy_subtrees(params, base, ["query", "value"])
  np.testing.assert_array_equal(out["query"]["kernel"], base["query"]["kernel"])
  np.testing.assert_array_equal(out["query"]["lora_b"], params["query"]["lora_b"])


def test_errors():
  params = nn.meta.unbox(boxed_params())
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"lora target 'qurey' matches no Dense kernel.*'query'"):
    lora.add_adapters(params, ("query", "qurey"), 2, 2.0, key)
  for rank in (0, -1, 1.5):
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
      lora.add_adapters(params, "query", rank, 2.0, key)
  with pytest.raises(ValueError, match="no targets"):
    lora.add_adapters(params, (), 2, 2.0, key)
  twice = lora.add_adapters(params, "wi", 2, 2.0, key)
  with pytest.raises(ValueError, match="wi already has adapters"):
    lora.add_adapters(twice, "wi", 2, 2.0, key)
  with pytest.raises(ValueError, match="no adapters"):
    lora.trainable_labels(params)
  # Plain arrays, no bias, 3-D kernel: the input/output split needs a hint.
  with pytest.raises(ValueError, match="cannot tell the input dims of out_nobias"):
    lora.add_adapters(params, "out_nobias", 2, 2.0, key)
  hinted = lora.add_adapters(params, "out_nobias", 2, 2.0, key, in_ndims={"out_*": 2})
  assert hinted["out_nobias"]["lora_a"].shape == (2, 3, 2)
  with pytest.raises(ValueError, match="cannot have 3 input dims"):
    lora.add_adapters(params, "out_nobias", 2, 2.0, key, in_ndims={"out_nobias": 3})
  # A stacked (scanned) kernel given as plain arrays does not fit its bias: an error, not a wrong adapter.
  stacked = {"mlp": {"kernel": jnp.zeros((3, 6, 5)), "bias": jnp.zeros((3, 5))}}
  with pytest.raises(ValueError, match="a scanned layer"):
    lora.add_adapters(stacked, "mlp", 2, 2.0, key)
  with pytest.raises(ValueError, match="unknown keys \\['ranks'\\]"):
    lora.add_adapters_from_config(params, {"targets": ("wi",), "ranks": 2}, key)
  assert lora.add_adapters_from_config(params, None, key) is params
  cfg = lora.add_adapters_from_config(params, {"targets": ("wi",), "rank": 2, "alpha": 4}, key)
  assert float(cfg["wi"]["lora_scale"]) == 2.0
