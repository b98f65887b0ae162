"""The discrete text-to-image kind (config.model.kind "t2i_tokens"): the KV-cache drawing and captioning
against a plain full-sequence forward (greedy, token by token), guidance 1 and 0 against the
conditional and the null-condition models, the vocabulary layout, config errors, and a tiny run
through the one trainer with the six t2i metrics and a resume. Masked decoding (MaskGIT): the image
block's attention, the training masks' share against its closed form, the parallel drawing's
schedule and order on a hand-built model, guidance, and a tiny run."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config_files
from mmjax.models import image_tokens as image_tokens_model, model_class
from mmjax.models.text_to_image import to_model_space, to_pixels
from mmjax.sample import image_tokens
from mmjax.sample.samplers import Greedy, TopK
from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS
from tests.test_guidance import reference_guide
from tests.test_rerank import likeliest_candidates

CONFIG = os.path.join(CONFIGS, "t2i_tokens.py")
T2I_KEYS = [f"t2i_{m}_accuracy{s}" for s in ("", "_noguidance") for m in ("object", "scene", "relation")]
VOCAB = 40  # a made-up text vocabulary: the layout below must follow it
S = 32


def _model_and_params(decoding, factored=False):
  c = config_files.load(CONFIG, "tiny")
  c.model.image_decoding = decoding
  if factored:  # FSQ codes (levels 4, 4, 2: the tiny config's 32 codes) factored over their digits
    c.model.image_tokenizer.quantizer = "fsq"
    c.model.factored_codes = True
  model = model_class(c.model)(c.model, VOCAB)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8)
  tokens = jnp.asarray(rng.integers(4, VOCAB, (4, 6)), jnp.int32)
  lengths = jnp.asarray([6, 3, 1, 0], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), to_model_space(images), tokens, lengths)["params"])
  return model, params, images, tokens, lengths


@pytest.fixture(scope="module")
def model_and_params():
  return _model_and_params("causal")


@pytest.fixture(scope="module")
def masked_model_and_params():
  return _model_and_params("masked")


@pytest.fixture(scope="module")
def factored_model_and_params():
  return _model_and_params("causal", factored=True)


def test_vocabulary_layout(model_and_params):
  model, params, *_ = model_and_params
  k = model.codebook_size
  assert (model.first_image_id, model.boi_id) == (VOCAB, VOCAB + k)
  # Rounded up to a multiple of 128 (the table splits over the tensor axis): 40 + 32 + 1 = 73 -> 128.
  assert k == 32 and model.total_vocab == 128
  assert params["decoder"]["embed"]["embedding"].shape[0] == 128


def _full_forward_greedy(model, params, tokens, lengths, n, guidance=None, plausibility=0.0):
  """Greedy codes by running the whole sequence each step (no cache; guided by test_guidance's float64
  numpy guidance): the reference. The sequence is
  held at its final length n, not yet drawn slots filled with BOI: the decoder is causal, so the logits
  at position i see only the tokens before it, and one compiled forward serves every step."""
  forward = jax.jit(lambda s, c: model.apply({"params": params}, s, c, method=lambda m, s, c: m.decoder(s, c)))
  cond = model.apply({"params": params}, tokens, lengths, method="condition")
  null = model.apply({"params": params}, tokens, jnp.zeros_like(lengths), method="condition")
  first, k = model.first_image_id, model.codebook_size
  seq = jnp.full((tokens.shape[0], n), model.boi_id, jnp.int32)
  for i in range(n):
    logits = forward(seq, cond)[:, i, first : first + k]
    if guidance is not None:
      lu = forward(seq, null)[:, i, first : first + k]
      logits = jnp.asarray(reference_guide(logits, lu, guidance, plausibility))
    if i + 1 < n:
      seq = seq.at[:, i + 1].set(first + jnp.argmax(logits, -1).astype(jnp.int32))
    else:
      last = first + jnp.argmax(logits, -1).astype(jnp.int32)
  return np.asarray(jnp.concatenate([seq[:, 1:], last[:, None]], axis=1) - first)


# Fresh weights give nearly flat code logits: a plausibility of 0.9 is where the constraint bites.
@pytest.mark.parametrize("guidance, plausibility", [(None, 0.0), (2.5, 0.0), (4.0, 0.9)])
def test_cached_drawing_equals_full_forward(model_and_params, guidance, plausibility):
  """Greedy drawing, plain, guided, and guided among the conditional model's plausible codes."""
  model, params, _, tokens, lengths = model_and_params
  n = model.num_codes(S)
  draw = lambda a: image_tokens.draw_codes(
    model, params, tokens, lengths, jax.random.key(0), n_codes=n, sampler=Greedy(), guidance=guidance, plausibility=a
  )
  got = draw(plausibility)
  want = _full_forward_greedy(model, params, tokens, lengths, n, guidance, plausibility)
  assert got.shape == (4, n) and int(got.min()) >= 0 and int(got.max()) < model.codebook_size
  np.testing.assert_array_equal(np.asarray(got), want)
  if plausibility:  # the constraint changes the drawing here
    assert not np.array_equal(np.asarray(draw(0.0)), want)


def test_factored_codes_draw_from_digit_embeddings(factored_model_and_params):
  """config.model.factored_codes with FSQ codes: the decoder's code ids embed (and score) as sums of
  one vector per FSQ digit, and its cached drawing equals the full forward's (guided too)."""
  model, params, _, tokens, lengths = factored_model_and_params
  embed = params["decoder"]["embed"]
  assert embed["digit_embedding"].shape == (4 + 4 + 2, 32)
  first = model.first_image_id
  table = model.apply({"params": params}, jnp.arange(first, first + 32)[None], method=lambda m, i: m.decoder.embed(i))
  digits = np.asarray(embed["digit_embedding"], np.float64)
  want = [digits[k % 4] + digits[4 + (k // 4) % 4] + digits[8 + k // 16] for k in range(32)]
  np.testing.assert_allclose(np.asarray(table[0]), np.stack(want), rtol=1e-5, atol=1e-7)
  n = model.num_codes(S)
  for guidance in (None, 2.5):
    got = image_tokens.draw_codes(
      model, params, tokens, lengths, jax.random.key(0), n_codes=n, sampler=Greedy(), guidance=guidance
    )
    np.testing.assert_array_equal(np.asarray(got), _full_forward_greedy(model, params, tokens, lengths, n, guidance))


@pytest.mark.parametrize("guidance", [None, 2.5])
def test_best_of_keeps_the_likeliest_drawing(model_and_params, guidance):
  """image_tokens.draw with candidates: the image of the codes the full forward finds likeliest."""
  model, params, _, tokens, lengths = model_and_params
  n, c, rng = model.num_codes(S), 3, jax.random.key(4)
  first, k = model.first_image_id, model.codebook_size
  many = image_tokens.draw_codes(
    model, params, jnp.tile(tokens, (c, 1)), jnp.tile(lengths, c), rng, n_codes=n, sampler=TopK(6), guidance=guidance
  )

  def full(codes, ln):  # [BOI, codes but the last] after the caption; the code ids' logits
    seq = jnp.concatenate([jnp.full((len(codes), 1), model.boi_id), first + jnp.asarray(codes[:, :-1])], axis=1)
    cond = model.apply({"params": params}, jnp.tile(tokens, (c, 1)), ln, method="condition")
    return model.apply({"params": params}, seq, cond, method=lambda m, s, cd: m.decoder(s, cd))[..., first : first + k]

  want, best = likeliest_candidates(many, full, jnp.tile(lengths, c), c, guidance)
  assert np.any(best != 0)  # the choice matters
  kw = dict(image_size=S, sampler=TopK(6), guidance=guidance, candidates=c)
  got = image_tokens.draw(model, params, tokens, lengths, rng, **kw)
  decode = lambda codes: to_pixels(model.apply({"params": params}, jnp.asarray(codes), S, method="decode_image"))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(decode(want)))


def test_guidance_one_is_conditional_and_zero_is_null(model_and_params):
  model, params, _, tokens, lengths = model_and_params
  n = model.num_codes(S)
  draw = lambda ln, g: np.asarray(
    image_tokens.draw_codes(model, params, tokens, ln, jax.random.key(1), n_codes=n, sampler=Greedy(), guidance=g)
  )
  assert_guidance_one_and_zero(draw, lengths)


def assert_guidance_one_and_zero(draw, lengths):
  """draw(lengths, guidance) -> an array: guidance 1 equals the conditional drawing (None), guidance 0
  the null condition's (every caption dropped), which differs from the conditional one for the rows
  with a caption (lengths[:3] > 0; else the test is vacuous)."""
  np.testing.assert_array_equal(draw(lengths, 1.0), draw(lengths, None))
  null = draw(jnp.zeros_like(lengths), None)
  np.testing.assert_array_equal(draw(lengths, 0.0), null)
  assert not np.array_equal(draw(lengths, None)[:3], null[:3])


def test_recon_every_weights_the_decoded_rows(model_and_params):
  """image_tokenizer.recon_every=2: the tokenizer decodes rows 0 and 2 of 4; their reconstruction
  errors (the full forward's, same parameters) count twice in vq_recon_mse and in the loss, the
  captionless row 3 not at all, and nothing else in the loss moves."""
  model, params, images, tokens, lengths = model_and_params
  n = tokens.shape[1]
  target_out = np.concatenate([np.asarray(tokens), np.zeros((4, 1), np.int32)], 1)
  target_out[np.arange(4), np.asarray(lengths)] = 2  # EOS after each caption
  mask = (np.arange(n + 1)[None] <= np.asarray(lengths)[:, None]).astype(np.float32)
  mask[3] = 0  # the captionless row
  batch = dict(image=images, target_out=target_out, target_mask=mask)
  key = {"sample": jax.random.key(7)}
  loss1, sums1 = model.apply({"params": params}, batch, rngs=key, method="loss_sums")
  halved = model_class(model.config)(model.config.copy_and_resolve_references(), model.vocab_size)
  halved.config.image_tokenizer.recon_every = 2
  loss2, sums2 = halved.apply({"params": params}, batch, rngs=key, method="loss_sums")
  recon = model.apply(
    {"params": params}, to_model_space(images), method=lambda m, x: m.image_tokenizer(x)[2]["recon_mse"]
  )
  recon = np.asarray(recon, np.float64)
  want = 2 * (recon[0] + recon[2])
  np.testing.assert_allclose(float(sums2["vq_recon_mse"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(sums1["vq_recon_mse"]), recon[:3].sum(), rtol=1e-5)
  vq_weight = float(model.config.vq_weight)
  np.testing.assert_allclose(float(loss2 - loss1), vq_weight * (want - recon[:3].sum()), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(sums2["image_xent"]), float(sums1["image_xent"]), rtol=1e-6)


def test_cached_captioning_equals_full_forward(model_and_params):
  model, params, images, *_ = model_and_params
  m = 5
  got = np.asarray(image_tokens.caption(model, params, jnp.asarray(images), max_new_tokens=m))
  codes = model.apply({"params": params}, to_model_space(images), method="encode_image")
  b = codes.shape[0]
  cond = model.apply({"params": params}, jnp.zeros((b, 0), jnp.int32), jnp.zeros((b,), jnp.int32), method="condition")
  seq = jnp.concatenate([jnp.full((b, 1), model.boi_id, jnp.int32), model.first_image_id + codes], axis=1)
  want = []
  for _ in range(m):
    nxt = jnp.argmax(model.apply({"params": params}, seq, cond, method=lambda mm, s, c: mm.decoder(s, c))[:, -1], -1)
    want.append(np.asarray(nxt))
    seq = jnp.concatenate([seq, nxt[:, None].astype(jnp.int32)], axis=1)
  want = np.stack(want, 1)
  # Greedy decoding stops a row at EOS (then pads); compare up to and including each row's EOS.
  for row_got, row_want in zip(got, want):
    stop = int(np.argmax(row_want == 2)) + 1 if (row_want == 2).any() else m
    np.testing.assert_array_equal(row_got[:stop], row_want[:stop])


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("model.caption_len", 4, "config.model.caption_len=4 < config.data.max_target_len"),
    ("model.decoder.max_len", 20, "config.model.decoder.max_len=20 <"),
    ("model.image_tokenizer.patch_size", 5, "patch_size=5"),
    ("model.caption_fraction", 1.0, "caption_fraction"),
    ("model.image_decoding", "diffusion", "config.model.image_decoding='diffusion'"),
    ("model.factored_codes", True, "quantizer='vq' has none"),
  ],
)
def test_config_errors(shared_data_dir, key, value, match):
  c = config_files.load(CONFIG, "tiny")
  config_files.apply_overrides(c, {key: value})
  with pytest.raises(ValueError, match=match):
    model_class(c.model).check_config(c)


def train_and_resume(c, wd: str, train_keys: set[str]):
  """Trains config c in wd, checks its metrics (every step logged and finite, the loss falling, the
  kind's train_keys, the six t2i test metrics in [0, 1]), resumes it for 2 more steps; returns the
  (first, resumed) loaded workdirs."""
  trainer.train_and_evaluate(c, wd, progress=False)
  rows = read_metrics(wd)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, c.total_steps + 1))
  assert all(np.isfinite(r["train/loss"]) for r in train)
  assert train[-1]["train/loss"] < train[0]["train/loss"]
  assert {f"train/{k}" for k in train_keys} <= set(train[-1])
  final = [r for r in rows if "test/t2i_object_accuracy" in r][-1]
  for key in T2I_KEYS:
    assert 0.0 <= final[f"test/{key}"] <= 1.0
  first = workdir_lib.load(wd)
  with c.unlocked():
    c.total_steps += 2
  trainer.train_and_evaluate(c, wd, progress=False)
  resumed = workdir_lib.load(wd)
  assert resumed.step == first.step + 2
  return first, resumed


def test_trains_evaluates_and_resumes(shared_data_dir, tmp_path):
  """A tiny run, its metrics, and a resume; the tokenizer stops updating after 2 steps
  (config.model.freeze_after), so the resumed steps move the decoder and not the tokenizer."""
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  c.model.freeze_after = {"image_tokenizer": 2}
  c.ema_decay = 0.0  # the loaded params are then the trained ones (an EMA would still drift to them)
  keys = {"image_token_accuracy", "codebook_used_fraction", "vq_recon_mse"}
  first, resumed = train_and_resume(c, str(tmp_path / "run"), keys)
  for part, same in (("image_tokenizer", True), ("decoder", False)):
    leaves = zip(jax.tree.leaves(first.params[part]), jax.tree.leaves(resumed.params[part]))
    assert all(np.array_equal(a, b) for a, b in leaves) == same, part


def test_masked_vocabulary_adds_mask_after_boi(masked_model_and_params):
  model, params, *_ = masked_model_and_params
  assert model.mask_id == model.boi_id + 1 == VOCAB + 32 + 1
  assert model.total_vocab == 128 and params["decoder"]["embed"]["embedding"].shape[0] == 128


def test_masked_image_block_reads_both_ways(masked_model_and_params):
  """fill_logits: a code's logits depend on the codes after it (they would not if the block were
  causal) and on the caption, but not on the caption's padded slots; the causal decoder's do not
  depend on later codes (the same parameters, the control)."""
  model, params, _, tokens, lengths = masked_model_and_params
  n = model.num_codes(S)
  rng = np.random.default_rng(1)
  ids = jnp.asarray(model.first_image_id + rng.integers(0, model.codebook_size, (4, n)), jnp.int32)
  cond = model.apply({"params": params}, tokens, lengths, method="condition")
  fill = lambda i, c: np.asarray(model.apply({"params": params}, i, c, method="fill_logits"))
  base = fill(ids, cond)
  assert base.shape == (4, n, model.total_vocab) and np.isfinite(base).all()
  later = ids.at[:, -1].set(model.mask_id)
  assert np.abs(fill(later, cond)[:, 0] - base[:, 0]).max() > 1e-4
  # Row 1 has 3 caption tokens: its slots 3.. are padding and must not matter; its words must.
  padded = model.apply({"params": params}, tokens.at[1, 4].set(7), lengths, method="condition")
  np.testing.assert_array_equal(fill(ids, padded)[1], base[1])
  worded = model.apply({"params": params}, tokens.at[1, 0].set(7), lengths, method="condition")
  assert np.abs(fill(ids, worded)[1] - base[1]).max() > 1e-4
  seq = jnp.concatenate([jnp.full((4, 1), model.boi_id, jnp.int32), ids], axis=1)
  causal = lambda q: np.asarray(model.apply({"params": params}, q, cond, method=lambda m, q, c: m.decoder(q, c)))
  np.testing.assert_allclose(causal(seq.at[:, -1].set(model.mask_id))[:, 1], causal(seq)[:, 1], rtol=1e-6, atol=1e-6)


def test_training_masks_follow_the_cosine_schedule():
  """A row masks ceil(N cos(pi r / 2)) codes at r ~ U[0, 1), so P(count >= k) = P(cos(pi r / 2) > (k - 1) / N)
  = (2 / pi) acos((k - 1) / N): the mean count is the sum of those over k = 1..N, and a share
  (2 / pi) acos(55 / 64) of the rows masks 56 codes or more. Every row masks at least one code, and
  every position is masked equally often."""
  b, n = 20000, 64
  hidden = np.asarray(image_tokens_model._random_mask(jax.random.key(0), b, n))
  per_row = hidden.sum(1)
  assert per_row.min() >= 1 and per_row.max() <= n
  at_least = lambda k: 2 / np.pi * np.arccos((k - 1) / n)
  mean = sum(at_least(k) for k in range(1, n + 1))
  assert abs(per_row.mean() - mean) < 0.4, (per_row.mean(), mean)  # std of the mean: 20 / sqrt(b) = 0.14
  assert abs((per_row >= 56).mean() - at_least(56)) < 0.012, ((per_row >= 56).mean(), at_least(56))
  assert np.abs(hidden.mean(0) - hidden.mean()).max() < 0.02


class _HandModel:
  """A stand-in for a masked TextToImageTokens with hand-set logits: position j's logits peak at code
  (the number of masked inputs when called) mod K, with strength j + 1, so that a code records the
  step that fixed it and the surest positions are the last ones. The condition is ignored."""

  first_image_id, codebook_size, boi_id, mask_id = 3, 20, 23, 24

  def apply(self, variables, *args, method):
    if method == "condition":
      return None
    ids = args[0]
    b, n = ids.shape
    still = jnp.sum(ids == self.mask_id, axis=-1)
    peak = jax.nn.one_hot(self.first_image_id + still % self.codebook_size, 32)  # [B, 32]
    return peak[:, None, :] * (1.0 + jnp.arange(n, dtype=jnp.float32))[None, :, None]


def _fill_by_hand(rows: int, n_codes: int, steps: int) -> np.ndarray:
  """fill_codes of _HandModel: greedy, without choice noise."""
  tokens, lengths = jnp.zeros((rows, 3), jnp.int32), jnp.full((rows,), 3, jnp.int32)
  return np.asarray(
    image_tokens.fill_codes(
      _HandModel(),
      {},
      tokens,
      lengths,
      jax.random.key(0),
      n_codes=n_codes,
      sampler=Greedy(),
      steps=steps,
      choice_temperature=0.0,
    )
  )


def test_fill_codes_schedule_and_order_by_hand():
  """N = 16 codes in 4 greedy steps without choice noise. Masked before each step: 16, then
  floor(16 cos(pi/8)) = 14, floor(16 cos(pi/4)) = 11, floor(16 cos(3 pi/8)) = 6; the surest
  (last) positions are fixed first, each taking the count of masked inputs of its step."""
  want = [6] * 6 + [11] * 5 + [14] * 3 + [16] * 2
  np.testing.assert_array_equal(_fill_by_hand(2, 16, 4), np.asarray([want, want]))
  # One step fixes everything at once; more steps than codes still fix at least one code per step.
  np.testing.assert_array_equal(_fill_by_hand(1, 16, 1), [[16] * 16])
  np.testing.assert_array_equal(_fill_by_hand(1, 4, 6), [[1, 2, 3, 4]])


def test_masked_guidance_one_is_conditional_and_zero_is_null(masked_model_and_params):
  model, params, _, tokens, lengths = masked_model_and_params
  n = model.num_codes(S)
  draw = lambda ln, g: np.asarray(
    image_tokens.fill_codes(
      model,
      params,
      tokens,
      ln,
      jax.random.key(1),
      n_codes=n,
      sampler=Greedy(),
      steps=4,
      choice_temperature=1.0,
      guidance=g,
    )
  )
  cond = draw(lengths, None)
  assert cond.shape == (4, n) and cond.min() >= 0 and cond.max() < model.codebook_size
  assert_guidance_one_and_zero(draw, lengths)


def test_masked_model_trains_and_draws(shared_data_dir, tmp_path):
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  c.model.image_decoding = "masked"
  c.sampler.steps = 4
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(c, wd, progress=False)
  rows = read_metrics(wd)
  train = [r for r in rows if "train/loss" in r]
  assert all(np.isfinite(r["train/loss"]) for r in train)
  assert train[-1]["train/loss"] < train[0]["train/loss"]
  final = [r for r in rows if "test/t2i_object_accuracy" in r][-1]
  for key in T2I_KEYS:
    assert 0.0 <= final[f"test/{key}"] <= 1.0
