"""Module shapes, masks and decoding of the model stack (tiny sizes, CPU)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax import layers
from mmjax.decoders.lm import Decoder
from mmjax.encoders import TextEncoder, ViT
from mmjax.fusion import build_fusion
from mmjax.fusion.base import Conditioning
from mmjax.models import build_model
from mmjax.models.kind import base_model_config
from mmjax.sample.generate import GenerateOptions, generate, token_logprobs

V = 37


def tiny_model_config(gated=False, fuse_depth=1):
  return ml_collections.ConfigDict(
    dict(
      base_model_config().to_dict(),
      attention_implementation="xla",
      vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, posemb="learn"),
      text=dict(width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8),
      fusion=dict(
        name="cross_attention", cross_attention_every=1, gated=gated, fuse_depth=fuse_depth, num_heads=2, mlp_dim=64
      ),
      decoder=dict(width=32, depth=2, num_heads=2, mlp_dim=64, max_len=16),
    )
  )


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "NaN/Inf in result"
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def inputs(rng, b=3, lt=6):
  images = rng.integers(0, 256, (b, 16, 16, 3)).astype(np.uint8)
  prompt = rng.integers(4, V, (b, 8)).astype(np.int32)
  prompt_len = np.array([8, 3, 5][:b], np.int32)
  prompt[1, 3:] = 0
  prompt[2, 5:] = 0
  target = rng.integers(4, V, (b, lt)).astype(np.int32)
  return images, prompt, prompt_len, target


def test_vit_and_text_encoder_shapes():
  rng = np.random.default_rng(0)
  images, prompt, plen, _ = inputs(rng)
  vit = ViT(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=4, posemb="sincos2d", implementation="xla")
  out, _ = vit.init_with_output(jax.random.key(0), images)
  assert out.shape == (3, 16, 32)
  txt = TextEncoder(V, width=32, depth=1, num_heads=2, mlp_dim=64, max_len=8, implementation="xla")
  out, _ = txt.init_with_output(jax.random.key(0), prompt, plen)
  assert out.shape == (3, 8, 32)


def test_text_encoder_ignores_padding():
  rng = np.random.default_rng(1)
  _, prompt, plen, _ = inputs(rng)
  txt = TextEncoder(V, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=8, implementation="xla")
  params = txt.init(jax.random.key(0), prompt, plen)
  other = prompt.copy()
  other[1, 3:] = rng.integers(4, V, 5)  # change only padded positions of row 1
  a = txt.apply(params, prompt, plen)[1, :3]
  b = txt.apply(params, other, plen)[1, :3]
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _conv_s2_f64(x, kernel, bias):
  """3x3 stride-2 convolution with XLA's "SAME" padding for even sizes (none before, one after)."""
  xp = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
  ho, wo = x.shape[1] // 2, x.shape[2] // 2
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1])) + bias
  for di in range(3):
    for dj in range(3):
      out += xp[:, di : di + 2 * ho : 2, dj : dj + 2 * wo : 2] @ kernel[di, dj]
  return 0.5 * out * (1 + np.tanh(np.sqrt(2 / np.pi) * (out + 0.044715 * out**3)))  # flax's (tanh) gelu


@pytest.mark.parametrize("stem", ["conv", "conv+patch", "hypercolumn"])
def test_conv_stems_against_float64(stem):
  """The conv stems built in float64 numpy from the module's own (random) parameters: two stride-2
  convolutions over the pixels (scaled to [-1, 1], with the x / y coordinate channels); a token is
  the linear embedding of the last map's cell, plus for "conv+patch" a linear map of its patch's
  pixels, plus for "hypercolumn" also of the first map's 2x2 cells under it. The loops name the
  patches by row and column, so a mis-ordered flattening fails."""
  p, h, w, d = 4, 8, 12, 8
  vit = ViT(
    width=d, depth=0, num_heads=2, mlp_dim=8, patch_size=p, stem=stem, stem_channels=(4, 6),
    coord_channels=True, implementation="xla",
  )  # fmt: skip
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (2, h, w, 3)).astype(np.uint8)
  params = dict(nn.meta.unbox(vit.init(jax.random.key(0), img)["params"]))
  params["patch_embed"] = dict(params["patch_embed"], bias=jnp.asarray(rng.normal(size=d), jnp.float32))
  for name in ("stem_0", "stem_1"):
    params[name] = dict(params[name], bias=jnp.asarray(rng.normal(size=params[name]["bias"].shape), jnp.float32))
  tokens = np.asarray(vit.apply({"params": params}, img), np.float64)
  f64 = lambda *keys: np.asarray(params[keys[0]][keys[1]] if len(keys) == 2 else params[keys[0]], np.float64)

  x = img.astype(np.float64) / 255 * 2 - 1
  xs = np.broadcast_to(2 * (np.arange(w) + 0.5) / w - 1, (h, w))  # pixel centres' x, then y, in [-1, 1]
  ys = np.broadcast_to((2 * (np.arange(h) + 0.5) / h - 1)[:, None], (h, w))
  x = np.concatenate([x, np.broadcast_to(np.stack([xs, ys], -1), (2, h, w, 2))], -1)
  m0 = _conv_s2_f64(x, f64("stem_0", "kernel"), f64("stem_0", "bias"))
  m1 = _conv_s2_f64(m0, f64("stem_1", "kernel"), f64("stem_1", "bias"))
  skips = [("pixel_embed", x, p), ("stem_0_embed", m0, 2)][: {"conv": 0, "conv+patch": 1, "hypercolumn": 2}[stem]]
  assert sorted(k for k in params if k.endswith("_embed")) == sorted(["patch_embed"] + [n for n, _, _ in skips])
  want = np.zeros((2, (h // p) * (w // p), d))
  for b in range(2):
    for r in range(h // p):
      for c in range(w // p):
        t = f64("patch_embed", "bias") + m1[b, r, c] @ f64("patch_embed", "kernel")
        for name, m, q in skips:  # q x q cells of map m lie under the token; flattened rows, columns, channels
          assert "bias" not in params[name]
          t += m[b, r * q : (r + 1) * q, c * q : (c + 1) * q].reshape(-1) @ f64(name, "kernel")
        want[b, r * (w // p) + c] = t
  want += f64("posemb")
  want = (want - want.mean(-1, keepdims=True)) / np.sqrt(want.var(-1, keepdims=True) + 1e-6)  # the final LayerNorm
  assert rel_err(tokens, want) < 1e-5
  with pytest.raises(ValueError, match="'conv\\+patch', 'hypercolumn'"):
    ViT(width=8, depth=0, num_heads=2, mlp_dim=8, patch_size=p, stem="pixels").init(jax.random.key(0), img)


def test_bad_inputs_raise():
  vit = ViT(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=5)
  with pytest.raises(ValueError, match="patch_size"):
    vit.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.uint8))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    vit.init(jax.random.key(0), np.zeros((1, 16, 16), np.uint8))
  with pytest.raises(ValueError, match="fusion.name='no_such_family'.*'cross_attention'"):
    build_fusion("no_such_family")


def test_model_logits_shape_and_causality():
  rng = np.random.default_rng(2)
  images, prompt, plen, target = inputs(rng)
  model = build_model(tiny_model_config(), V)
  params = model.init(jax.random.key(0), images, prompt, plen, target)
  logits = model.apply(params, images, prompt, plen, target)
  assert logits.shape == (3, 6, V)
  changed = target.copy()
  changed[:, 4:] = rng.integers(4, V, (3, 2))
  logits2 = model.apply(params, images, prompt, plen, changed)
  # Positions before the change cannot see it (causal decoder).
  np.testing.assert_allclose(logits[:, :4], logits2[:, :4], rtol=1e-5, atol=1e-5)
  assert rel_err(logits2[:, 4:], logits[:, 4:]) > 1e-3


def test_zero_gate_makes_gated_cross_attention_identity():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
  memory = jnp.asarray(rng.normal(size=(2, 7, 32)), jnp.float32)
  block = layers.TransformerBlock(2, 16, 64, cross_attention=True, gated_cross_attention=True, implementation="xla")
  params = nn.meta.unbox(block.init(jax.random.key(0), x, memory=memory))
  assert float(params["params"]["cross_gate"][0]) == 0.0
  out = block.apply(params, x, memory=memory)
  plain = layers.TransformerBlock(2, 16, 64, implementation="xla")
  p2 = {
    "params": {k: v for k, v in params["params"].items() if k not in ("cross_attention", "norm_cross", "cross_gate")}
  }
  np.testing.assert_allclose(out, plain.apply(p2, x), rtol=1e-6, atol=1e-6)
  # ... and a non-zero gate lets the media through.
  params["params"]["cross_gate"] = jnp.ones((1,))
  assert rel_err(block.apply(params, x, memory=memory), out) > 1e-3


@pytest.mark.parametrize("gated", [False, True])
def test_kv_cache_decoding_equals_full_forward(gated):
  rng = np.random.default_rng(4)
  images, prompt, plen, target = inputs(rng, lt=7)
  model = build_model(tiny_model_config(gated=gated), V)
  params = nn.meta.unbox(model.init(jax.random.key(0), images, prompt, plen, target)["params"])
  if gated:  # open the gates so the test exercises the media path
    params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if "cross_gate" in jax.tree_util.keystr(p) else x, params
    )
  full = model.apply({"params": params}, images, prompt, plen, target)
  cond = model.apply({"params": params}, images, prompt, plen, method="encode")
  _, cache = model.apply({"params": params}, jnp.zeros((3, 16), jnp.int32), cond, 0, method="decode", mutable=["cache"])
  cache = jax.tree.map(jnp.zeros_like, cache["cache"])
  steps = []
  for t in range(target.shape[1]):
    logits, mutated = model.apply(
      {"params": params, "cache": cache}, target[:, t : t + 1], cond, t, method="decode", mutable=["cache"]
    )
    cache = mutated["cache"]
    steps.append(logits[:, 0])
  assert rel_err(jnp.stack(steps, 1), full) < 1e-5


def _numpy_rope_pairs(x, positions, theta):
  """float64 rotary positions of x [..., S, H, D] at positions [S, A]: head dims split into A equal parts;
  in each part of d dims, dims i and i + d/2 are one complex number rotated by positions[:, a] *
  theta^(-2i/d)."""
  x = np.asarray(x, np.float64)
  out = []
  for a, part in enumerate(np.split(x, positions.shape[-1], axis=-1)):
    d = part.shape[-1]
    z = part[..., : d // 2] + 1j * part[..., d // 2 :]
    angle = positions[:, a, None] * theta ** (-np.arange(0, d, 2) / d)  # [S, d/2]
    z = z * np.exp(1j * angle)[:, None, :]
    out += [z.real, z.imag]
  return np.concatenate([np.concatenate(out[i : i + 2], -1) for i in range(0, len(out), 2)], -1)


def test_axial_rope_against_float64_and_scores_depend_on_offsets():
  """layers.axial_rope rotates each part of the head dims by its axis (float64 complex numbers), one axis
  is layers.rope, and a query-key score is unchanged when both positions move by one 2-D offset (and
  changed when only one does)."""
  rng = np.random.default_rng(11)
  q, k = (jnp.asarray(rng.normal(size=(2, 6, 3, 16)), jnp.float32) for _ in range(2))
  pos = rng.integers(0, 9, (6, 2))
  got = layers.axial_rope(q, jnp.asarray(pos), 20.0)
  assert rel_err(got, _numpy_rope_pairs(q, pos, 20.0)) < 1e-5
  np.testing.assert_allclose(layers.axial_rope(q, jnp.asarray(pos[:, :1]), 20.0), layers.rope(q, pos[:, 0], 20.0))
  scores = lambda p, r: np.einsum(
    "bshd,bthd->bhst", layers.axial_rope(q, jnp.asarray(p), 20.0), layers.axial_rope(k, jnp.asarray(r), 20.0)
  )
  base = scores(pos, pos)
  shift = pos + np.array([3, -5])
  assert rel_err(scores(shift, shift), base) < 1e-5
  assert rel_err(scores(shift, pos), base) > 0.1
  with pytest.raises(ValueError, match="head_dim 16 does not split into 3 axes"):
    layers.axial_rope(q, jnp.zeros((6, 3), jnp.int32), 20.0)


def test_decoder_rotary_positions_cached_equal_full_and_need_rope():
  """Decoder(positions=...): 2-D rotary positions given per call; decoding through the KV cache (each step
  given its own position) equals the full forward, the positions matter, and they need style rope_theta."""
  rng = np.random.default_rng(12)
  dec = Decoder(vocab_size=V, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=12, style=dict(rope_theta=30.0))
  ids = jnp.asarray(rng.integers(0, V, (2, 9)), jnp.int32)
  cond = Conditioning(prefix=jnp.asarray(rng.normal(size=(2, 3, 32)), jnp.float32), prefix_len=jnp.asarray([3, 2]))
  pos = jnp.asarray(rng.integers(0, 5, (1, 12, 2)), jnp.int32)
  v = nn.meta.unbox(dec.init(jax.random.key(0), ids, cond, positions=pos))
  full = dec.apply(v, ids, cond, positions=pos)
  assert rel_err(dec.apply(v, ids, cond, positions=pos.at[:, 5:].set(0)), full) > 1e-3
  _, cache = dec.apply(v, ids, cond, 0, decode=True, positions=pos, mutable=["cache"])
  cache = jax.tree.map(jnp.zeros_like, cache["cache"])
  logits, mutated = dec.apply(
    {**v, "cache": cache}, ids[:, :4], cond, 0, decode=True, positions=pos[:, :7], mutable=["cache"]
  )
  steps = [logits]
  for t in range(4, 9):
    logits, mutated = dec.apply(
      {**v, "cache": mutated["cache"]},
      ids[:, t : t + 1],
      cond,
      3 + t,
      decode=True,
      positions=pos[:, 3 + t : 4 + t],
      mutable=["cache"],
    )
    steps.append(logits)
  assert rel_err(jnp.concatenate(steps, 1), full) < 1e-5
  plain = Decoder(vocab_size=V, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=12)
  with pytest.raises(ValueError, match="style.rope_theta is 0"):
    plain.apply(v, ids, cond, positions=pos)


def test_greedy_generate_matches_argmax_of_full_forward():
  rng = np.random.default_rng(5)
  images, prompt, plen, _ = inputs(rng)
  model = build_model(tiny_model_config(), V)
  params = nn.meta.unbox(model.init(jax.random.key(0), images, prompt, plen, np.zeros((3, 5), np.int32))["params"])
  opts = GenerateOptions(max_new_tokens=5, bos_id=1, eos_id=-1, pad_id=0)
  out = np.asarray(generate(model, params, images, prompt, plen, jax.random.key(0), opts))
  # Independent check: re-run the full (teacher-forced) model on the generated prefix each time.
  seq, want = np.ones((3, 1), np.int32), []
  for t in range(5):
    logits = np.asarray(model.apply({"params": params}, images, prompt, plen, seq)[:, -1], np.float64)
    nxt = logits.argmax(-1)
    top = logits.max(-1)
    want.append(logits[np.arange(3), nxt] - top - np.log(np.exp(logits - top[:, None]).sum(-1)))  # float64 log-softmax
    seq = np.concatenate([seq, nxt.astype(np.int32)[:, None]], 1)
  np.testing.assert_array_equal(out, seq[:, 1:])
  # token_logprobs, one teacher-forced pass, gives each generated token's log-probability at its step.
  got = token_logprobs(model, params, images, prompt, plen, jnp.asarray(out), bos_id=1)
  assert got.shape == (3, 5) and rel_err(got, np.stack(want, 1)) < 1e-5


def _gelu64(x):
  """tanh-approximate GELU in float64 (flax's nn.gelu default)."""
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["gelu", "geglu"])
def test_mlp_activations_match_float64_reference(activation):
  x = np.random.default_rng(11).normal(size=(2, 5, 12)).astype(np.float32)
  mlp = layers.MLP(24, activation=activation)
  params = nn.meta.unbox(mlp.init(jax.random.key(1), x)["params"])
  rnd = np.random.default_rng(12)  # fresh non-zero weights and biases everywhere
  params = jax.tree.map(lambda p: jnp.asarray(rnd.normal(size=p.shape) * 0.3, jnp.float32), params)
  got = mlp.apply({"params": params}, x)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  dense = lambda name, h: h @ p[name]["kernel"] + p[name]["bias"]
  h = _gelu64(dense("wi", x.astype(np.float64)))
  if activation == "geglu":
    h = h * dense("wi_linear", x.astype(np.float64))
  want = dense("wo", h)
  assert rel_err(got, want) < 1e-5
  assert ("wi_linear" in params) == (activation == "geglu")


def test_mlp_unknown_activation_is_an_error():
  with pytest.raises(ValueError, match="swish.*gelu"):
    layers.MLP(8, activation="swish").init(jax.random.key(0), jnp.ones((1, 2, 4)))
  # From a config, the error names the key to fix.
  c = tiny_model_config()
  c.decoder.mlp_activation = "swish"
  images, prompt, plen, target = inputs(np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"config\.model\.decoder\.mlp_activation"):
    build_model(c, V).init(jax.random.key(0), images, prompt, plen, target)


def test_sincos_1d_against_float64_formula():
  n, dim = 64, 10
  got = layers.sincos_1d(n, dim)
  half = dim // 2
  p = np.arange(n)[:, None]
  wavelengths = [2.0 * (2.0 * n) ** (k / (half - 1)) for k in range(half)]  # 2 ... 4n positions
  want = np.concatenate(
    [np.sin(2 * np.pi * p / np.array(wavelengths)), np.cos(2 * np.pi * p / np.array(wavelengths))], 1
  )
  assert got.shape == (n, dim) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  assert layers.sincos_1d(4, 7)[:, -1].tolist() == [0, 0, 0, 0]  # an odd width pads one zero column


def test_embed_ordinal_tail_starts_from_sincos_codes():
  vocab, width, n = 40, 12, 16
  embed = layers.Embed(vocab, width, ordinal_tail=n)
  table = np.asarray(embed.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]["embedding"].value)
  np.testing.assert_allclose(table[vocab - n :], layers.sincos_1d(n, width) * 0.02 * np.sqrt(2), rtol=1e-6)
  head = table[: vocab - n]
  assert 0.01 < head.std() < 0.03 and not np.allclose(head[:, : width // 2], 0)  # the rest stays random
  plain = layers.Embed(vocab, width).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]["embedding"].value
  np.testing.assert_array_equal(np.asarray(plain)[: vocab - n], head)  # same random rows as without the tail
  with pytest.raises(ValueError, match="ordinal_tail"):
    layers.Embed(vocab, width, ordinal_tail=vocab + 1).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))


def test_embed_factored_block_sums_digit_vectors_and_its_softmax_factors():
  """Ids [5, 5 + 4*3*2) of a 40-id table are mixed-radix numbers (levels 4, 3, 2, digit 0 lowest):
  their rows are sums of one vector per digit (built here digit by digit in float64 from the
  parameter), the other rows the plain table's; the logits (tied) of the block give a softmax over the
  block equal to the product of one softmax per digit (closed form of exp(sum) = prod(exp))."""
  vocab, width, start, levels = 40, 12, 5, (4, 3, 2)
  embed = layers.Embed(vocab, width, factored_start=start, factored_levels=levels)
  params = nn.meta.unbox(embed.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"])
  digits = np.asarray(params["digit_embedding"], np.float64)  # rows: 4 for digit 0, 3 for digit 1, 2 for digit 2
  assert digits.shape == (4 + 3 + 2, width)
  plain = np.asarray(params["embedding"], np.float64)
  want = plain.copy()
  for k in range(24):
    d0, d1, d2 = k % 4, (k // 4) % 3, k // 12
    want[start + k] = digits[d0] + digits[4 + d1] + digits[7 + d2]
  ids = jnp.arange(vocab)[None]
  got = embed.apply({"params": params}, ids)[0]
  assert rel_err(got, want) < 1e-6
  assert abs(float(np.std(want[start : start + 24])) - 0.02) < 0.008  # the sums start at the plain rows' scale
  x = jax.random.normal(jax.random.key(1), (3, width))
  logits = np.asarray(embed.apply({"params": params}, x, method="attend"), np.float64)
  assert rel_err(logits, np.asarray(x, np.float64) @ want.T) < 1e-5
  block = logits[:, start : start + 24]
  p_joint = np.exp(block - block.max(-1, keepdims=True))
  p_joint /= p_joint.sum(-1, keepdims=True)
  soft = lambda v: np.exp(v - v.max(-1, keepdims=True)) / np.exp(v - v.max(-1, keepdims=True)).sum(-1, keepdims=True)
  xd = np.asarray(x, np.float64) @ digits.T
  p0, p1, p2 = soft(xd[:, :4]), soft(xd[:, 4:7]), soft(xd[:, 7:])
  p_prod = np.stack([p0[:, k % 4] * p1[:, (k // 4) % 3] * p2[:, k // 12] for k in range(24)], -1)
  assert rel_err(p_joint, p_prod) < 1e-5
  np.testing.assert_array_equal(
    np.asarray(layers.mixed_radix_digits(jnp.asarray([0, 1, 4, 13, 23]), levels)),
    [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 1], [3, 2, 1]],
  )
  with pytest.raises(ValueError, match="factored block"):
    layers.Embed(vocab, width, factored_start=20, factored_levels=levels).init(
      jax.random.key(0), jnp.zeros((1, 1), jnp.int32)
    )
  untied = Decoder(64, width=8, depth=1, num_heads=2, mlp_dim=16, factored_start=4, factored_levels=(2, 2))
  with pytest.raises(ValueError, match="tie_embeddings=True"):
    untied.clone(tie_embeddings=False).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32), Conditioning())


def test_decoder_location_embedding_option():
  c = tiny_model_config()
  c.decoder.location_embedding = "sincos"
  model = build_model(c, 40)
  assert model.location_bins == 0
  from mmjax.models.vlm import VisionLanguageModel

  model = VisionLanguageModel(c, 40, location_bins=8)
  images = jnp.zeros((1, 16, 16, 3), jnp.uint8)
  prompt, plen, target = jnp.zeros((1, 4), jnp.int32), jnp.array([2]), jnp.zeros((1, 3), jnp.int32)
  params = model.init(jax.random.key(0), images, prompt, plen, target)["params"]
  table = np.asarray(params["decoder"]["embed"]["embedding"].value)
  np.testing.assert_allclose(table[-8:], layers.sincos_1d(8, table.shape[1]) * 0.02 * np.sqrt(2), rtol=1e-6)
  c.decoder.location_embedding = "fourier"
  with pytest.raises(ValueError, match="config.model.decoder.location_embedding='fourier'"):
    VisionLanguageModel(c, 40, location_bins=8).init(jax.random.key(0), images, prompt, plen, target)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.0])
def test_decoder_xent_spreads_location_targets_against_float64(sigma):
  from mmjax.decoders.lm import Decoder

  vocab, n = 30, 12  # ids 18..29 are location bins 0..11
  rng = np.random.default_rng(int(sigma * 10))
  logits = rng.normal(0, 2, (3, 7, vocab)).astype(np.float32)
  labels = rng.integers(0, vocab, (3, 7)).astype(np.int32)
  labels[0, :3] = [18, 29, 23]  # the first and last bins (cut Gaussians) and a middle one
  got = Decoder(vocab, width=8, location_bins=n, location_label_sigma=sigma).xent(
    jnp.asarray(logits), jnp.asarray(labels)
  )
  x = logits.astype(np.float64)
  logp = x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)
  want = np.zeros(labels.shape)
  for idx in np.ndindex(labels.shape):
    q = np.zeros(vocab)
    label = labels[idx]
    if sigma and label >= vocab - n:
      bins = np.arange(n)
      w = np.exp(-0.5 * ((bins - (label - (vocab - n))) / sigma) ** 2)
      q[vocab - n :] = w / w.sum()
    else:
      q[label] = 1.0
    want[idx] = -(q * logp[idx]).sum()
  assert rel_err(got, want) < 1e-5
