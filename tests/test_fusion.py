"""Fusion families: shapes, masks vs hand-built dense masks, zero gates, KV-cache decoding, generate."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.attention import MaskSpec
from mmjax.fusion import build_fusion
from mmjax.fusion.flamingo import PerceiverResampler, most_recent_image_mask
from mmjax.models import build_model
from mmjax.models.kind import base_model_config
from mmjax.sample.generate import GenerateOptions, generate
from tests.test_model import V, inputs, rel_err

FAMILIES = {
  "prefix_lm": dict(name="prefix_lm"),
  "flamingo": dict(
    name="flamingo", cross_attention_every=1, gated=True, num_latents=4, resampler_depth=1, num_heads=2, mlp_dim=64
  ),
  "flamingo_memory": dict(
    name="flamingo",
    cross_attention_every=2,
    gated=True,
    num_latents=4,
    resampler_depth=1,
    num_heads=2,
    mlp_dim=64,
    prompt_as="memory",
  ),
  "qformer_prefix": dict(name="qformer", output="prefix", num_queries=3, depth=1, num_heads=2, mlp_dim=64),
  "qformer_memory": dict(
    name="qformer",
    output="memory",
    cross_attention_every=1,
    num_queries=3,
    depth=1,
    num_heads=2,
    mlp_dim=64,
    qformer_width=16,
  ),
  "cross_attention_text_prefix": dict(name="cross_attention", cross_attention_every=1, text_as="prefix"),
}


def model_config(fusion):
  return ml_collections.ConfigDict(
    dict(
      base_model_config().to_dict(),
      attention_implementation="xla",
      vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, posemb="learn"),
      text=dict(width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8),
      fusion=fusion,
      decoder=dict(width=32, depth=2, num_heads=2, mlp_dim=64, max_len=32),
    )
  )


def open_gates(params):
  return jax.tree_util.tree_map_with_path(
    lambda p, x: x + 0.5 if "cross_gate" in jax.tree_util.keystr(p) else x, params
  )


@pytest.mark.parametrize(
  "family", ["prefix_lm", "flamingo", "flamingo_memory", "qformer_memory", "cross_attention_text_prefix"]
)
def test_kv_cache_decoding_equals_full_forward(family):
  rng = np.random.default_rng(4)
  images, prompt, plen, target = inputs(rng, lt=5)
  model = build_model(model_config(FAMILIES[family]), V)
  params = open_gates(nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), images, prompt, plen, target)["params"]))
  full = jax.jit(model.apply)({"params": params}, images, prompt, plen, target)
  assert full.shape == (3, 5, V)
  assert rel_err(decode_step_by_step(model, params, images, prompt, plen, target), full) < 1e-5


def decode_step_by_step(model, params, images, prompt, plen, target, **media):
  """Logits [B, T, V] of `target` decoded one token at a time with the KV cache (after a prefill of
  the prefix, if the fusion makes one): must equal the full teacher-forced forward."""
  b = target.shape[0]
  cond = jax.jit(functools.partial(model.apply, method="encode"))({"params": params}, images, prompt, plen, **media)
  n = model.prefill_length(cond)
  _, cache = jax.eval_shape(
    lambda: model.apply(
      {"params": params}, jnp.zeros(target.shape, jnp.int32), cond, 0, method="decode", mutable=["cache"]
    )
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), cache["cache"])
  if n:  # prefill: the prefix alone
    logits, mutated = model.apply(
      {"params": params, "cache": cache}, jnp.zeros((b, 0), jnp.int32), cond, 0, method="decode", mutable=["cache"]
    )
    assert logits.shape == (b, 0, V)
    cache = mutated["cache"]
  step = jax.jit(
    lambda c, tok, i: model.apply({"params": params, "cache": c}, tok, cond, i, method="decode", mutable=["cache"])
  )
  steps = []
  for t in range(target.shape[1]):
    logits, mutated = step(cache, target[:, t : t + 1], jnp.asarray(n + t, jnp.int32))
    cache = mutated["cache"]
    steps.append(logits[:, 0])
  return jnp.stack(steps, 1)


@pytest.mark.parametrize("family", ["prefix_lm", "flamingo"])
def test_greedy_generate_is_consistent_with_full_forward(family):
  rng = np.random.default_rng(5)
  images, prompt, plen, _ = inputs(rng)
  model = build_model(model_config(FAMILIES[family]), V)
  params = open_gates(
    nn.meta.unbox(model.init(jax.random.key(0), images, prompt, plen, np.zeros((3, 4), np.int32))["params"])
  )
  opts = GenerateOptions(max_new_tokens=4, bos_id=1, eos_id=-1, pad_id=0)
  out = np.asarray(jax.jit(lambda p: generate(model, p, images, prompt, plen, jax.random.key(0), opts))(params))
  # Greedy: each generated token is the argmax of the full (teacher-forced) model on what precedes it.
  seq = np.concatenate([np.ones((3, 1), np.int32), out[:, :-1]], 1)
  logits = model.apply({"params": params}, images, prompt, plen, seq)
  np.testing.assert_array_equal(out, np.asarray(logits.argmax(-1)))


def encoded(family, seed):
  """Random inputs, the family's model and parameters, its Conditioning and teacher-forced logits."""
  rng = np.random.default_rng(seed)
  images, prompt, plen, target = inputs(rng)
  model = build_model(model_config(FAMILIES[family]), V)
  params = model.init(jax.random.key(0), images, prompt, plen, target)
  cond = model.apply(params, images, prompt, plen, method="encode")
  return rng, (images, prompt, plen, target), model, params, cond, model.apply(params, images, prompt, plen, target)


def test_prefix_lm_ignores_padded_prompt_and_sees_whole_prefix():
  rng, (images, prompt, plen, target), model, params, cond, logits = encoded("prefix_lm", 6)
  assert cond.prefix.shape == (3, 4 + 8, 32) and cond.memory is None
  np.testing.assert_array_equal(cond.prefix_len, 4 + plen)
  other = prompt.copy()
  other[1, 3:] = rng.integers(4, V, 5)  # only padded prompt positions of row 1 change
  np.testing.assert_allclose(model.apply(params, images, other, plen, target)[1], logits[1], rtol=1e-5, atol=1e-5)
  # The last valid prompt token is visible to every target position (bidirectional prefix).
  other = prompt.copy()
  other[0, 7] = (other[0, 7] + 1 - 4) % (V - 4) + 4
  assert rel_err(model.apply(params, images, other, plen, target)[0, 0], logits[0, 0]) > 1e-4


def test_cross_attention_text_as_prefix_puts_the_question_in_the_decoder():
  rng, (images, prompt, plen, target), model, params, cond, logits = encoded("cross_attention_text_prefix", 12)
  # The memory is the image alone (4 patches of the 16-px test images); the question is the prefix.
  assert cond.memory.shape == (3, 4, 32) and cond.prefix.shape == (3, 8, 32)
  np.testing.assert_array_equal(cond.prefix_len, plen)
  assert model.prefill_length(cond) == 8
  other = prompt.copy()
  other[1, plen[1] :] = rng.integers(4, V, 8 - plen[1])  # padded question positions never matter
  np.testing.assert_allclose(model.apply(params, images, other, plen, target)[1], logits[1], rtol=1e-5, atol=1e-5)
  other = images.copy()
  other[2] = rng.integers(0, 256, other[2].shape)  # and the image does, through cross-attention
  assert rel_err(model.apply(params, other, prompt, plen, target)[2], logits[2]) > 1e-4
  bad = model_config(dict(FAMILIES["cross_attention_text_prefix"], text_as="both"))
  with pytest.raises(ValueError, match="text_as"):
    build_model(bad, V).init(jax.random.key(0), images, prompt, plen, target)


def test_decoder_prefix_mask_matches_dense():
  """The decoder's prefix-LM self-attention mask equals a hand-built dense mask."""
  from mmjax.decoders.lm import prefix_segment_ids

  p, t = 5, 4
  plen = jnp.array([5, 2], jnp.int32)
  seg = prefix_segment_ids(jnp.arange(p + t), plen, p)
  dense = np.asarray(
    MaskSpec(causal=True, prefix_len=plen, q_segment_ids=seg, kv_segment_ids=seg).dense(2, p + t, p + t)
  )
  for b in range(2):
    for i in range(p + t):
      for j in range(p + t):
        pad_i = plen[b] <= i < p
        pad_j = plen[b] <= j < p
        expect = (pad_i == pad_j) and (j <= i or j < plen[b])
        assert dense[b, i, j] == expect, (b, i, j)


def test_flamingo_most_recent_image_mask_matches_dense():
  marker = np.zeros((2, 10), bool)
  marker[0, [0, 4]] = True
  marker[1, [3, 5, 6]] = True
  n_img, lat = 3, 2
  spec = most_recent_image_mask(marker, n_img, lat)
  dense = np.asarray(spec.dense(2, 10, n_img * lat))
  for b in range(2):
    seen = -1
    for t in range(10):
      if marker[b, t]:
        seen += 1
      for j in range(n_img * lat):
        assert dense[b, t, j] == (seen >= 0 and j // lat == seen), (b, t, j)


def test_flamingo_mask_in_gated_cross_attention():
  """Rows before the first image get exactly the text-only output; the mask only selects images."""
  from mmjax import layers

  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.normal(size=(1, 6, 16)), jnp.float32)
  mem = jnp.asarray(rng.normal(size=(1, 2 * 3, 16)), jnp.float32)
  marker = np.zeros((1, 6), bool)
  marker[0, [2, 4]] = True
  spec = most_recent_image_mask(marker, 2, 3)
  block = layers.TransformerBlock(2, 8, 32, cross_attention=True, gated_cross_attention=True, implementation="xla")
  params = nn.meta.unbox(block.init(jax.random.key(0), x, memory=mem, memory_mask=spec))
  params["params"]["cross_gate"] = jnp.ones((1,))
  out = block.apply(params, x, memory=mem, memory_mask=spec)
  # Changing image 1's latents changes only rows >= 4; image 0's only rows 2, 3 (self-attention is
  # unmasked here, so compare the cross-attention effect through rows' independence of later rows).
  mem2 = mem.at[:, 3:].set(0.0)
  out2 = block.apply(params, x, memory=mem2, memory_mask=spec)
  np.testing.assert_allclose(out2[:, :4], out[:, :4], rtol=1e-6, atol=1e-6)
  assert rel_err(out2[:, 4:], out[:, 4:]) > 1e-4


def test_zero_gates_make_flamingo_decoder_ignore_media():
  rng = np.random.default_rng(8)
  images, prompt, plen, target = inputs(rng)
  model = build_model(model_config(FAMILIES["flamingo"]), V)
  params = nn.meta.unbox(model.init(jax.random.key(0), images, prompt, plen, target)["params"])
  gates = [x for p, x in jax.tree_util.tree_leaves_with_path(params) if "cross_gate" in jax.tree_util.keystr(p)]
  assert len(gates) == 2 and all(float(g[0]) == 0.0 for g in gates)
  a = model.apply({"params": params}, images, prompt, plen, target)
  b = model.apply({"params": params}, 255 - images, prompt, plen, target)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # closed gates: images cannot matter
  opened = open_gates(params)
  assert (
    rel_err(
      model.apply({"params": opened}, 255 - images, prompt, plen, target),
      model.apply({"params": opened}, images, prompt, plen, target),
    )
    > 1e-4
  )


def test_perceiver_resampler_shape_and_padding():
  rng = np.random.default_rng(9)
  tokens = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
  lengths = jnp.array([7, 4], jnp.int32)
  r = PerceiverResampler(num_latents=5, depth=2, num_heads=2, mlp_dim=32, implementation="xla")
  params = r.init(jax.random.key(0), tokens, lengths)
  apply = jax.jit(r.apply)
  out = apply(params, tokens, lengths)
  assert out.shape == (2, 5, 16)
  changed = tokens.at[1, 4:].set(9.0)
  np.testing.assert_allclose(apply(params, changed, lengths), out, rtol=1e-5, atol=1e-5)


def test_qformer_shapes_and_config_errors():
  rng = np.random.default_rng(10)
  images, prompt, plen, target = inputs(rng)
  for family, field in [("qformer_prefix", "prefix"), ("qformer_memory", "memory")]:
    model = build_model(model_config(FAMILIES[family]), V)
    params = model.init(jax.random.key(0), images, prompt, plen, target)
    cond = model.apply(params, images, prompt, plen, method="encode")
    assert getattr(cond, field).shape == (3, 3 + 8, 32)
    np.testing.assert_array_equal(getattr(cond, field + "_len"), 3 + plen)
  bad = build_fusion("qformer", width=32, output="memory", cross_attention_every=0)
  with pytest.raises(ValueError, match="cross_attention_every"):
    bad.init(jax.random.key(0), {"image": (jnp.zeros((1, 4, 8)), None)})
  with pytest.raises(ValueError, match="cross_attention_every"):
    build_fusion("prefix_lm", width=32, cross_attention_every=1).init(
      jax.random.key(0), {"image": (jnp.zeros((1, 4, 8)), None)}
    )


def test_fusion_configs_build_and_run():
  import os

  from mmjax import config_files
  from tests.conftest import CONFIGS

  rng = np.random.default_rng(11)
  families = {
    "fusion_prefix_lm": "prefix_lm",
    "fusion_flamingo": "flamingo",
    "fusion_qformer": "qformer",
    "default": "cross_attention",
  }
  for name, family in families.items():
    c = config_files.load(os.path.join(CONFIGS, f"{name}.py"))
    assert c.model.fusion.name == family
    s = c.data.image_size
    images = rng.integers(0, 256, (1, s, s, 3)).astype(np.uint8)
    prompt = np.ones((1, c.data.max_prompt_len), np.int32)
    target = np.ones((1, c.data.max_target_len), np.int32)
    model = build_model(c.model, 64)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), images, prompt, np.array([3]), target)[0])
    assert out.shape == (1, c.data.max_target_len, 64)
