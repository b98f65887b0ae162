"""The pixel-colour text-to-image kind (config.model.kind "t2i_pixels"): the palette tokenizer against
float64 numpy (nearest colours, patch order, its loss and gradient, a fit to k-means' fixed point),
the pixel head's order within a patch, the KV-cache drawing against a plain full forward (greedy,
pixel by pixel), guidance 1 and 0 against the conditional and the null-condition models, the
decoder's embedding inputs, config errors, and a tiny run through the one trainer with a resume."""

import itertools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config_files
from mmjax.decoders.lm import Decoder
from mmjax.encoders.palette import PaletteTokenizer, grid_palette, nearest
from mmjax.fusion.base import Conditioning
from mmjax.models import flow_matching, model_class
from mmjax.models.pixel_tokens import PIXEL_EMBEDDINGS, GridPosition, grid_places, pixel_rows
from mmjax.models.text_to_image import to_model_space, to_pixels
from mmjax.sample import pixel_tokens
from mmjax.sample.samplers import Greedy, TopK
from tests.conftest import CONFIGS
from tests.test_guidance import reference_guide
from tests.test_image_tokens import assert_guidance_one_and_zero, train_and_resume
from tests.test_rerank import likeliest_candidates

CONFIG = os.path.join(CONFIGS, "t2i_pixels.py")
VOCAB = 40
S = 32


@pytest.fixture(scope="module", params=["config", "other options"])
def model_and_params(request):
  """The tiny config (caption prefix, grid places, its pixel embedding, its grid rotary positions), and
  its other options: the caption read by cross-attention word by word, no grid-place embeddings, the
  other pixel embedding, grid rotary positions on where the config has them off (and off where on)."""
  c = config_files.load(CONFIG, "tiny")
  assert c.model.grid_posemb and c.model.caption_conditioning == "prefix"
  if request.param == "other options":
    c.model.caption_conditioning = "memory"
    c.model.decoder.cross_attention_every = 1
    c.model.grid_posemb = False
    (other,) = set(PIXEL_EMBEDDINGS) - {c.model.pixel_embedding}
    c.model.pixel_embedding = other
    c.model.grid_rope_theta = 0.0 if c.model.grid_rope_theta else 10.0
  model = model_class(c.model)(c.model, VOCAB)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8)
  tokens = jnp.asarray(rng.integers(4, VOCAB, (4, 6)), jnp.int32)
  lengths = jnp.asarray([6, 3, 1, 0], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), to_model_space(images), tokens, lengths)["params"])
  # Fresh weights draw nearly uniform colours; larger random ones make every logit matter, so that the
  # comparisons below would see a pixel read from the wrong place.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return model, params, tokens, lengths


def test_grid_palette_and_nearest():
  values = (-1.0, 0.0, 1.0)
  want = np.array(list(itertools.product(values, values, values)), np.float32)
  np.testing.assert_array_equal(grid_palette(3), want)
  assert grid_palette(4).shape == (64, 3) and grid_palette(1).tolist() == [[0.0, 0.0, 0.0]]
  palette = np.random.default_rng(1).uniform(-1, 1, (20, 3))
  x = np.random.default_rng(2).uniform(-1, 1, (7, 9, 3))
  dist = ((x[..., None, :].astype(np.float64) - palette) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(nearest(jnp.asarray(x), jnp.asarray(palette))), dist.argmin(-1))
  with pytest.raises(ValueError, match="levels=0"):
    grid_palette(0)


def test_tokenizer_patch_order_round_trip_and_loss():
  tok = PaletteTokenizer(levels=3, patch_size=4)
  palette = grid_palette(3)
  rng = np.random.default_rng(3)
  idx = rng.integers(0, 27, (2, 8, 12))  # 2 x 3 patches of 4 x 4
  images = palette[idx]
  v = tok.init(jax.random.key(0), jnp.asarray(images))
  digits, losses = tok.apply(v, jnp.asarray(images))
  # Patch (r, c) is position 3 r + c; its pixels in row-major order inside it.
  want = np.stack([idx[:, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4].reshape(2, 16) for r in range(2) for c in range(3)], 1)
  np.testing.assert_array_equal(np.asarray(digits), want)
  np.testing.assert_array_equal(np.asarray(tok.apply(v, digits, (2, 3), method=tok.decode)), images)
  np.testing.assert_array_equal(np.asarray(losses["palette"]), 0.0)
  # Off-palette colours: the loss is the mean squared distance to the nearest entry, per image.
  noisy = images + rng.normal(0, 0.2, images.shape)
  dist = ((noisy[..., None, :] - palette.astype(np.float64)) ** 2).sum(-1).min(-1)
  np.testing.assert_allclose(np.asarray(tok.apply(v, jnp.asarray(noisy))[1]["palette"]), dist.mean((1, 2)), rtol=1e-5)
  with pytest.raises(ValueError, match="patch_size=4"):
    tok.apply(v, jnp.zeros((1, 6, 8, 3)))


def test_palette_fits_the_means_of_its_pixels():
  """The palette's only gradient comes from the pixels that chose each entry: gradient descent on the
  loss leaves the unchosen entries where the grid put them and moves each chosen one to the mean of its
  pixels (k-means' fixed point, computed in float64)."""
  tok = PaletteTokenizer(levels=2, patch_size=2)
  grid = grid_palette(2)
  rng = np.random.default_rng(4)
  chosen = np.array([0, 3, 6])  # three of the eight corners; pixels scattered around them
  idx = rng.choice(chosen, (3, 4, 4))
  x = np.clip(grid[idx] + rng.normal(0, 0.25, idx.shape + (3,)), -1.5, 1.5)
  assert np.array_equal(((x[..., None, :] - grid) ** 2).sum(-1).argmin(-1), idx)  # the assignment holds
  params = tok.init(jax.random.key(0), jnp.asarray(x))["params"]
  loss = lambda p: jnp.sum(tok.apply({"params": p}, jnp.asarray(x))[1]["palette"])
  opt = optax.sgd(0.5)
  state = opt.init(params)
  for _ in range(200):
    updates, state = opt.update(jax.grad(loss)(params), state)
    params = optax.apply_updates(params, updates)
  got = np.asarray(nn.meta.unbox(params)["palette"], np.float64)
  for k in range(8):
    want = x[idx == k].mean(0) if k in chosen else grid[k]
    np.testing.assert_allclose(got[k], want, atol=1e-5)


def test_pixel_rows_table_and_value():
  """pixel_rows against float64 numpy: table [P, K, D] -> table[j, c_j]; with a palette [K, 3], table
  [P, 3, D] -> rgb(c_j) @ table[j]."""
  rng = np.random.default_rng(11)
  p, k, d = 5, 7, 6
  colours = rng.integers(0, k, (2, 3, p))
  table = rng.normal(size=(p, k, d))
  got = np.asarray(pixel_rows(jnp.asarray(table, jnp.float32), jnp.asarray(colours)))
  np.testing.assert_allclose(got, table[np.arange(p), colours], rtol=1e-6)
  palette, weights = rng.normal(size=(k, 3)), rng.normal(size=(p, 3, d))
  got = np.asarray(
    pixel_rows(jnp.asarray(weights, jnp.float32), jnp.asarray(colours), jnp.asarray(palette, jnp.float32))
  )
  want = np.einsum("abpc,pcd->abpd", palette[colours], weights)
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-6


def test_head_reads_only_earlier_pixels_of_its_patch(model_and_params):
  model, params, *_ = model_and_params
  p, k = model.pixels_per_patch, model.palette_size
  rng = np.random.default_rng(5)
  hidden = jnp.asarray(rng.normal(size=(2, 3, model.config.decoder.width)), jnp.float32)
  colours = rng.integers(0, k, (2, 3, p))
  head = lambda col: np.asarray(
    model.apply({"params": params}, hidden, jnp.asarray(col), method=lambda m, h, c: m.head(h, c, m.colour_values()))
  )
  base = head(colours)
  for j in (0, 5, p - 1):
    changed = colours.copy()
    changed[..., j:] = (changed[..., j:] + 1) % k
    np.testing.assert_array_equal(head(changed)[..., : j + 1, :], base[..., : j + 1, :])  # pixel j reads < j
    if j + 1 < p:
      assert np.abs(head(changed)[..., j + 1 :, :] - base[..., j + 1 :, :]).min() > 0  # ... and every later one reads j


def _teacher_forced(m, colours, tokens, lengths):
  """The reference forward: the decoder over [BOI, patches] after the caption, then the pixel head."""
  return m.head(m.states(m.inputs(colours), m.condition(tokens, lengths)), colours, m.colour_values())


def _full_forward_greedy(model, params, tokens, lengths, n, guidance=None, plausibility=0.0):
  """Greedy colours by running the whole teacher-forced forward for every pixel (no cache): the
  reference (guided by test_guidance's float64 numpy guidance). Pixels not drawn yet hold colour 0; a
  pixel's logits read only the pixels before it."""
  p = model.pixels_per_patch
  forward = jax.jit(
    lambda col, cond: model.apply(
      {"params": params},
      col,
      cond,
      method=lambda m, c, cd: m.head(m.states(m.inputs(c), cd), c, m.colour_values()),
    )
  )
  cond = model.apply({"params": params}, tokens, lengths, method="condition")
  null = model.apply({"params": params}, tokens, jnp.zeros_like(lengths), method="condition")
  colours = np.zeros((tokens.shape[0], n, p), np.int32)
  for i, j in itertools.product(range(n), range(p)):
    logits = np.asarray(forward(jnp.asarray(colours), cond)[:, i, j], np.float64)
    if guidance is not None:
      lu = np.asarray(forward(jnp.asarray(colours), null)[:, i, j], np.float64)
      logits = reference_guide(logits, lu, guidance, plausibility)
    colours[:, i, j] = logits.argmax(-1)
  return colours


@pytest.mark.parametrize("guidance, plausibility", [(None, 0.0), (2.5, 0.0), (4.0, 0.3)])
def test_cached_drawing_equals_full_forward(model_and_params, guidance, plausibility):
  """Greedy drawing, plain, guided, and guided among the conditional model's plausible colours."""
  model, params, tokens, lengths = model_and_params
  n = model.num_patches(S)
  draw = lambda a: pixel_tokens.draw_colours(
    model, params, tokens, lengths, jax.random.key(0), n_patches=n, sampler=Greedy(), guidance=guidance, plausibility=a
  )
  got = draw(plausibility)
  want = _full_forward_greedy(model, params, tokens, lengths, n, guidance, plausibility)
  assert got.shape == (4, n, model.pixels_per_patch) and len(np.unique(want)) > 2
  np.testing.assert_array_equal(np.asarray(got), want)
  if plausibility:  # the constraint changes the drawing here
    assert not np.array_equal(np.asarray(draw(0.0)), want)


@pytest.mark.parametrize("guidance", [None, 2.5])
def test_best_of_keeps_the_likeliest_drawing(model_and_params, guidance):
  """pixel_tokens.draw with candidates: the image of the drawing the full forward finds likeliest."""
  model, params, tokens, lengths = model_and_params
  n, c, rng = model.num_patches(S), 3, jax.random.key(4)
  kw = dict(sampler=TopK(3), guidance=guidance)
  many = pixel_tokens.draw_colours(
    model, params, jnp.tile(tokens, (c, 1)), jnp.tile(lengths, c), rng, n_patches=n, **kw
  )
  full = lambda col, ln: model.apply(
    {"params": params}, jnp.asarray(col), jnp.tile(tokens, (c, 1)), ln, method=_teacher_forced
  )
  want, best = likeliest_candidates(many, full, jnp.tile(lengths, c), c, guidance)
  assert np.any(best != 0)  # the choice matters
  got = pixel_tokens.draw(model, params, tokens, lengths, rng, image_size=S, candidates=c, **kw)
  decode = lambda col: to_pixels(model.apply({"params": params}, jnp.asarray(col), S, method="decode_image"))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(decode(want)))


def test_guidance_one_is_conditional_and_zero_is_null(model_and_params):
  model, params, tokens, lengths = model_and_params
  draw = lambda ln, g: np.asarray(
    pixel_tokens.draw(model, params, tokens, ln, jax.random.key(1), image_size=S, sampler=Greedy(), guidance=g)
  )
  assert_guidance_one_and_zero(draw, lengths)


def test_word_dropout_replaces_caption_words_and_reaches_the_loss(model_and_params):
  """flow_matching.drop_words: each token becomes PAD with probability p (a binomial count), lengths
  untouched; p = 0 is the identity. In the model's loss, p > 0 changes the objective (the prefix reads
  the dropped words) and p = 0 does not."""
  tokens = jnp.asarray(np.random.default_rng(7).integers(4, 40, (200, 50)), jnp.int32)
  out = np.asarray(flow_matching.drop_words(jax.random.key(3), tokens, 0.3, 0))
  dropped = out == 0
  assert np.array_equal(out[~dropped], np.asarray(tokens)[~dropped])
  assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / dropped.size)  # 4 sigma of a binomial share
  assert flow_matching.drop_words(jax.random.key(3), tokens, 0.0, 0) is tokens
  model, params, tokens, lengths = model_and_params
  rng = np.random.default_rng(8)
  target_out = np.concatenate([np.asarray(tokens), np.zeros((4, 1), np.int32)], 1)
  target_out[np.arange(4), np.asarray(lengths)] = 2  # EOS after each caption
  mask = (np.arange(7)[None] <= np.asarray(lengths)[:, None]).astype(np.float32)
  batch = dict(image=rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8), target_out=target_out, target_mask=mask)
  losses = {}
  for p in (0.0, 0.5):
    config = model.config.copy_and_resolve_references()
    config.word_dropout = p
    m = model_class(config)(config, model.vocab_size)
    losses[p] = float(m.apply({"params": params}, batch, rngs={"sample": jax.random.key(9)}, method="loss_sums")[0])
  base = float(model.apply({"params": params}, batch, rngs={"sample": jax.random.key(9)}, method="loss_sums")[0])
  assert model.config.word_dropout == 0.0 and losses[0.0] == base and losses[0.5] != base


def test_decoder_reads_embeddings_and_returns_states():
  """Decoder inputs given as embeddings equal the same ids; output="hidden" is what the tied head reads."""
  dec = Decoder(vocab_size=50, width=32, depth=2, num_heads=2, mlp_dim=64, max_len=16)
  rng = np.random.default_rng(6)
  ids = jnp.asarray(rng.integers(0, 50, (2, 7)), jnp.int32)
  cond = Conditioning(prefix=jnp.asarray(rng.normal(size=(2, 3, 32)), jnp.float32), prefix_len=jnp.asarray([3, 2]))
  v = dec.init(jax.random.key(0), ids, cond)
  logits = dec.apply(v, ids, cond)
  emb = dec.apply(v, ids, method=lambda m, i: m.embed(i))
  np.testing.assert_allclose(np.asarray(dec.apply(v, emb, cond)), np.asarray(logits), rtol=1e-5, atol=1e-6)
  hidden = dec.apply(v, emb, cond, output="hidden")
  assert hidden.shape == (2, 7, 32)
  attended = dec.apply(v, hidden, method=lambda m, h: m.embed.attend(h))
  np.testing.assert_allclose(np.asarray(attended), np.asarray(logits), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="output='probs'"):
    dec.apply(v, ids, cond, output="probs")


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("model.caption_len", 4, "config.model.caption_len=4 < config.data.max_target_len"),
    ("model.decoder.max_len", 20, "config.model.decoder.max_len=20 <"),
    ("model.palette.patch_size", 5, "config.model.palette.patch_size=5"),
    ("model.cond_dropout", 1.0, "cond_dropout"),
    ("model.word_dropout", 1.0, "config.model.word_dropout=1.0"),
    ("model.caption_conditioning", "suffix", "config.model.caption_conditioning='suffix'"),
    ("model.caption_conditioning", "memory", "set config.model.decoder.cross_attention_every=1"),
    ("model.pixel_embedding", "rgb", "config.model.pixel_embedding='rgb'"),
    ("model.grid_rope_theta", -1.0, "config.model.grid_rope_theta=-1.0"),
  ],
)
def test_config_errors(shared_data_dir, key, value, match):
  c = config_files.load(CONFIG, "tiny")
  config_files.apply_overrides(c, {key: value})
  with pytest.raises(ValueError, match=match):
    model_class(c.model).check_config(c)


def test_grid_position_is_a_row_plus_a_column():
  """GridPosition on a 3 x 3 grid: patch i = (i // 3, i % 3) reads row and column vectors, so patches of
  one column differ by their rows' difference alone; indices past the grid read its last place; a grid
  that is not square is an error."""
  grid = GridPosition(8)
  v = nn.meta.unbox(grid.init(jax.random.key(0), jnp.arange(9), 9))
  rows, cols = (np.asarray(v["params"][k], np.float64) for k in ("rows", "columns"))
  assert rows.shape == cols.shape == (3, 8)
  got = np.asarray(grid.apply(v, jnp.arange(11), 9), np.float64)
  want = np.stack([rows[i // 3] + cols[i % 3] for i in [*range(9), 8, 8]])
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="12 patches are not a square grid"):
    grid.init(jax.random.key(0), jnp.arange(12), 12)


def test_grid_places_by_hand(shared_data_dir):
  """grid_places: a prefix of 2 then a 3 x 3 grid; the caption at (0, 0), patch i at (1 + i // 3, 1 + i % 3),
  the same from any start (the KV cache's steps); a grid that is not square is an error, and so is a
  config whose heads do not split into two axes of rotated pairs."""
  want = [[0, 0], [0, 0], [1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3], [3, 1], [3, 2], [3, 3]]
  np.testing.assert_array_equal(grid_places(2, 0, 11, 9)[0], want)
  np.testing.assert_array_equal(grid_places(2, jnp.int32(6), 3, 9)[0], want[6:9])
  with pytest.raises(ValueError, match="8 patches are not a square grid"):
    grid_places(2, 0, 10, 8)
  c = config_files.load(CONFIG, "tiny")
  config_files.apply_overrides(c, {"model.grid_rope_theta": 10.0, "model.decoder.width": 36})  # 2 heads of 18
  with pytest.raises(ValueError, match="config.model.grid_rope_theta=10.0: .* head_dim is 18"):
    model_class(c.model).check_config(c)


def test_trains_evaluates_and_resumes(shared_data_dir, tmp_path):
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  train_and_resume(c, str(tmp_path / "run"), {"pixel_accuracy", "patch_accuracy", "palette_mse"})
