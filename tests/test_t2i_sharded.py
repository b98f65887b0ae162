"""The text-to-image kinds (t2i_flow; t2i_tokens and t2i_pixels at the end) on 8 simulated CPU devices
(tests/multidevice.py): training on a data=2 x fsdp=2 x tensor=2 mesh gives the 1-device losses and
parameters, the flow-matching noise does not depend on the mesh, the DiT's and the text encoder's
kernels are split over the mesh as the rules table (mmjax.sharding.DEFAULT_RULES) says, and sampling
on the mesh gives the 1-device images.

Tolerances are those of the VLM's 8-device tests (tests/test_sharding.py): losses rtol 1e-5, parameters a
relative error below 1e-5. The mesh changes only the order of float sums (all-reduces over batch shards,
partial matmuls over fsdp / tensor), so each number moves by float32 rounding and nothing more.
"""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import config_files
from mmjax.models.text_to_image import to_pixels
from mmjax.sample import text_to_image as t2i_sample
from mmjax.train import state as state_lib, step as step_lib
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow

V = 64
ONE = dict(data=1, fsdp=1, tensor=1)
MIXED = dict(data=2, fsdp=2, tensor=2)


def tiny_config(mesh, name="t2i_flow", **model):
  c = config_files.load(f"{CONFIGS}/{name}.py", "tiny")
  c.model.attention_implementation = "xla"  # the same kernel on 1 and 8 devices
  c.model.update(model)
  c.mesh = ml_collections.ConfigDict(dict(mesh, sequence=1))
  return c


def random_batches(config, n=3, seed=0):
  """n fixed batches of the kind's keys: random pixels and captions of 1 .. max_target_len - 2 tokens
  (target_mask 1 on the tokens and the EOS after them)."""
  rng = np.random.default_rng(seed)
  b, s, lt = config.batch_size, config.data.image_size, config.data.max_target_len
  out = []
  for _ in range(n):
    mask = (np.arange(lt)[None] < rng.integers(2, lt, (b, 1))).astype(np.float32)
    out.append(
      dict(
        image=rng.integers(0, 256, (b, s, s, 3)).astype(np.uint8),
        target_out=(rng.integers(4, V, (b, lt)) * mask).astype(np.int32),
        target_mask=mask,
      )
    )
  return out


def train(mesh, devices, data, name="t2i_flow", **model):
  setup = state_lib.make_setup(tiny_config(mesh, name, **model), V, devices=devices)
  state = state_lib.init_state(setup, jax.random.key(0))
  init = jax.device_get(state.params)  # a host copy: the step donates the state
  step = step_lib.make_train_step(setup, data[0])
  losses = []
  with setup.context():
    for b in data:
      sh = setup.batch_sharding(b)
      state, m = step(state, {k: jax.device_put(v, sh[k]) for k, v in b.items()})
      losses.append(float(m["loss"]))
  return setup, init, state, losses


def flat(tree):
  return np.concatenate([np.ravel(x).astype(np.float64) for x in jax.tree.leaves(jax.device_get(tree))])


def rel_err(a, b):
  a, b = flat(a), flat(b)
  assert np.isfinite(a).all() and np.isfinite(b).all()
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def by_path(tree) -> dict:
  return {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


# A few leaves with the mesh axes the rules table gives their logical axes (embed -> fsdp; heads, mlp,
# vocab -> tensor; patch, channels, head_dim and norms replicated), written out here so that a change of
# the model's annotations or of the table shows up.
EXPECTED_SPECS = {
  "['dit']['block_0']['self_attention']['query']['kernel']": ("fsdp", "tensor", None),  # embed, heads, head_dim
  "['dit']['block_0']['cross_attention']['out']['kernel']": ("tensor", None, "fsdp"),  # heads, head_dim, embed
  "['dit']['block_0']['mlp']['wi']['kernel']": ("fsdp", "tensor"),  # embed, mlp
  "['dit']['block_0']['mlp']['wo']['kernel']": ("tensor", "fsdp"),  # mlp, embed
  "['dit']['block_0']['modulation']['ada']['kernel']": ("fsdp", None, "tensor"),  # embed, (9), mlp
  "['dit']['patch_embed']['kernel']": (None, "fsdp"),  # patch, embed
  "['dit']['final']['kernel']": ("fsdp", None),  # embed, patch
  "['dit']['time_in']['kernel']": (None, "tensor"),  # channels, mlp
  "['text_encoder']['embed']['embedding']": ("tensor", "fsdp"),  # vocab, embed
  "['text_encoder']['block_0']['self_attention']['key']['kernel']": ("fsdp", "tensor", None),
  "['text_encoder']['block_0']['mlp']['wi']['kernel']": ("fsdp", "tensor"),
  "['text_encoder']['block_0']['mlp']['wo']['kernel']": ("tensor", "fsdp"),
  "['dit']['final_norm']['LayerNorm_0']['scale']": (None,),
}


def check_param_shardings(setup, state):
  sizes = dict(setup.mesh.shape)
  params = by_path(state.params)
  for path, spec in EXPECTED_SPECS.items():
    leaf = params[path]
    assert tuple(leaf.sharding.spec) == spec, (path, leaf.sharding.spec)
    want = tuple(d // (sizes[a] if a else 1) for d, a in zip(leaf.shape, spec))
    assert len(leaf.addressable_shards) == 8
    assert {s.data.shape for s in leaf.addressable_shards} == {want}, (path, leaf.shape)
  # Every leaf: placed as the setup's state sharding says, each device holding its spec's slice; and each
  # device holds well under half of each tower (measured: DiT 0.38, its time / patch / final kernels being
  # split 2 ways only; a replicated tower holds all of it, one with replicated blocks 0.59).
  for part in ("dit", "text_encoder"):
    full = held = 0
    for path, leaf in by_path(state.params[part]).items():
      assert leaf.sharding.is_equivalent_to(by_path(setup.state_sharding.params[part])[path], leaf.ndim), path
      assert all(s.data.shape == leaf.sharding.shard_shape(leaf.shape) for s in leaf.addressable_shards), path
      full += leaf.size
      held += leaf.addressable_shards[0].data.size
    assert held < 0.45 * full, (part, held / full)
  # Adam's first moment is sharded like the parameters.
  mu = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu")][0].mu
  for path, leaf in by_path(mu).items():
    assert leaf.sharding.is_equivalent_to(params[path].sharding, leaf.ndim), path


@pytest.mark.devices(8)
def test_noise_draws_do_not_depend_on_the_mesh():
  """The loss's times and noise come from jax.random with the step's key (mmjax.train.step); on the mesh
  they are drawn batch-sharded. With jax_threefry_partitionable (JAX's default since 0.5, unset by mmjax)
  every device draws its slice; without it XLA draws the whole array and slices it. Either way the values
  are the 1-device ones (the flag changes which bits a key gives, not their dependence on the mesh)."""
  assert jax.device_count() == 8, jax.devices()
  assert jax.config.jax_threefry_partitionable  # what the trainer runs with
  mesh = state_lib.make_setup(tiny_config(MIXED), V).mesh
  key = jax.random.fold_in(jax.random.key(0), 3)

  def draw(k):
    k_t, k_eps = jax.random.split(k)
    return jax.random.uniform(k_t, (16,)), jax.random.normal(k_eps, (16, 32, 32, 3))

  sharded = (NamedSharding(mesh, P(("data", "fsdp"))), NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
  bits = {}
  for partitionable in (True, False):
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
      one = jax.jit(draw)(jax.device_put(key, jax.devices()[0]))
      eight = jax.jit(draw, out_shardings=sharded)(key)
    finally:
      jax.config.update("jax_threefry_partitionable", True)
    assert len(eight[1].addressable_shards) == 8 and eight[1].addressable_shards[0].data.shape == (4, 32, 16, 3)
    for a, b in zip(one, eight):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bits[partitionable] = np.asarray(one[1])
  assert not np.array_equal(bits[True], bits[False])  # the flag does pick other numbers


@pytest.mark.devices(8)
def test_training_on_mesh_matches_one_device():
  assert jax.device_count() == 8, jax.devices()
  data = random_batches(tiny_config(ONE))
  _, init, ref_state, ref_losses = train(ONE, jax.devices()[:1], data)
  setup, _, state, losses = train(MIXED, jax.devices(), data)
  assert dict(setup.mesh.shape) == dict(MIXED, sequence=1)
  assert np.isfinite(ref_losses).all() and len(set(ref_losses)) == 3, ref_losses
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert rel_err(state.params, ref_state.params) < 1e-5
  # ... where the 3 steps moved them by ~0.7% of their norm (Adam at learning rate 2e-3): the mesh's error
  # (measured ~2e-8) is below a thousandth of the update.
  moved = rel_err(init, ref_state.params)
  assert moved > 2e-3 and rel_err(state.params, ref_state.params) < 1e-3 * moved, moved
  check_param_shardings(setup, state)


@pytest.mark.devices(8)
def test_sampling_on_mesh_matches_one_device():
  """make_generate_fn under the 8-device setup gives the 1-device images, with and without guidance.

  uint8 tolerance: at most 1 level on at most 0.2% of the pixels. The two programs sum in other orders, so a
  model-space value differs by float32 rounding (~1e-6 relative); a pixel changes only where that moves
  (x + 1) * 127.5 across a rounding boundary, a chance of about 1e-4 per pixel (a few of the 24576 here),
  and by one level at most."""
  assert jax.device_count() == 8, jax.devices()
  ref_setup = state_lib.make_setup(tiny_config(ONE), V, devices=jax.devices()[:1])
  setup = state_lib.make_setup(tiny_config(MIXED), V)
  # Initial parameters with every leaf perturbed: the DiT's zero-initialised output layer and adaLN
  # modulations would otherwise make the velocity 0 and the images the clipped starting noise.
  params = state_lib.init_state(ref_setup, jax.random.key(0)).params
  leaves, treedef = jax.tree.flatten(jax.device_get(params))
  rng = np.random.default_rng(1)
  params = jax.tree.unflatten(treedef, [x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype) for x in leaves])
  data = random_batches(tiny_config(ONE), n=1, seed=2)[0]
  tokens, lengths = data["target_out"][:8], (data["target_mask"][:8].sum(-1) - 1).astype(np.int32)
  lengths[0] = 0  # one row on the null condition
  opts = dict(steps=3, method="heun")
  run_one, run_mesh = t2i_sample.make_generate_fn(ref_setup, opts), t2i_sample.make_generate_fn(setup, opts)
  assert run_mesh.multiple == 4 and 8 % run_mesh.multiple == 0
  on_mesh = jax.device_put(params, setup.state_sharding.params)
  assert len(by_path(on_mesh)["['dit']['block_0']['mlp']['wi']['kernel']"].addressable_shards) == 8
  key = jax.random.key(5)
  noise = np.asarray(to_pixels(jax.random.normal(key, (8, 32, 32, 3))))
  images = {}
  for guidance in (None, 3.0):
    a = run_one(params, tokens, lengths, key, guidance)
    b = run_mesh(on_mesh, tokens, lengths, key, guidance)
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape == (8, 32, 32, 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1, (guidance, diff.max())
    assert (diff > 0).mean() <= 2e-3, (guidance, (diff > 0).mean())
    # The DiT did something: the images are far from the starting noise, and mostly not clipped.
    assert np.abs(a.astype(int) - noise.astype(int)).mean() > 10, guidance
    assert ((a > 0) & (a < 255)).mean() > 0.5, guidance
    images[guidance] = a
  assert np.abs(images[None].astype(int) - images[3.0].astype(int)).mean() > 1  # guidance changes them


@pytest.mark.devices(8)
@pytest.mark.parametrize("name,decoding", [("t2i_tokens", "causal"), ("t2i_tokens", "masked"), ("t2i_pixels", None)])
def test_tokens_kind_on_mesh_matches_one_device(name, decoding):
  """t2i_tokens: training (tokenizer and decoder together) and drawing (top-k sampling of the codes with
  guidance, the same key; one by one, or MaskGIT's parallel steps) on the mesh give the 1-device losses,
  parameters and images. The masked case also quantizes by FSQ, with the codes' embeddings summed over
  their digits (the block of the vocabulary-sharded table composed in place): one compile covers the
  three options. The drawn codes are discrete, so equal logits up to rounding give equal codes, and
  the tokenizer's decoder then differs by rounding only (the tolerance of the flow sampling above).
  t2i_pixels: the same for the palette, the decoder and the pixel head (colours drawn pixel by pixel)."""
  assert jax.device_count() == 8, jax.devices()
  model = {} if decoding is None else dict(image_decoding=decoding)
  if decoding == "masked":
    model.update(factored_codes=True, image_tokenizer=dict(quantizer="fsq"))
  data = random_batches(tiny_config(ONE, name, **model))
  _, init, ref_state, ref_losses = train(ONE, jax.devices()[:1], data, name, **model)
  setup, _, state, losses = train(MIXED, jax.devices(), data, name, **model)
  assert np.isfinite(ref_losses).all() and len(set(ref_losses)) == 3, ref_losses
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert rel_err(state.params, ref_state.params) < 1e-5
  assert rel_err(init, ref_state.params) > 2e-3
  decoder_kernel = by_path(state.params)["['decoder']['blocks_0']['mlp']['wi']['kernel']"]
  assert tuple(decoder_kernel.sharding.spec) == ("fsdp", "tensor")
  ref_setup = state_lib.make_setup(tiny_config(ONE, name, **model), V, devices=jax.devices()[:1])
  opts = t2i_sample.sampler_options(ref_setup.config)
  run_one, run_mesh = t2i_sample.make_generate_fn(ref_setup, opts), t2i_sample.make_generate_fn(setup, opts)
  tokens, lengths = data[0]["target_out"][:8], (data[0]["target_mask"][:8].sum(-1) - 1).astype(np.int32)
  lengths[0] = 0
  params = jax.device_get(ref_state.params)
  key = jax.random.key(5)
  for guidance in (None, 3.0):
    a = run_one(params, tokens, lengths, key, guidance)
    b = run_mesh(state.params, tokens, lengths, key, guidance)
    assert a.shape == b.shape == (8, 32, 32, 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 2e-3, (guidance, diff.max(), (diff > 0).mean())
