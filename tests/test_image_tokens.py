"""The discrete text-to-image kind (config.model.kind "t2i_tokens"): the KV-cache drawing and captioning
against a plain full-sequence forward (greedy, token by token), guidance 1 and 0 against the
conditional and the null-condition models, the vocabulary layout, config errors, and a tiny run
through the one trainer with the six t2i metrics and a resume."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config_files
from mmjax.models import model_class
from mmjax.models.text_to_image import to_model_space
from mmjax.sample import image_tokens
from mmjax.sample.samplers import Greedy
from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS

CONFIG = os.path.join(CONFIGS, "t2i_tokens.py")
T2I_KEYS = [f"t2i_{m}_accuracy{s}" for s in ("", "_noguidance") for m in ("object", "scene", "relation")]
VOCAB = 40  # a made-up text vocabulary: the layout below must follow it
S = 32


@pytest.fixture(scope="module")
def model_and_params():
  c = config_files.load(CONFIG, "tiny")
  model = model_class(c.model)(c.model, VOCAB)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, S, S, 3), dtype=np.uint8)
  tokens = jnp.asarray(rng.integers(4, VOCAB, (4, 6)), jnp.int32)
  lengths = jnp.asarray([6, 3, 1, 0], jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(0), to_model_space(images), tokens, lengths)["params"])
  return model, params, images, tokens, lengths


def test_vocabulary_layout(model_and_params):
  model, params, *_ = model_and_params
  k = model.codebook_size
  assert (model.first_image_id, model.boi_id) == (VOCAB, VOCAB + k)
  # Rounded up to a multiple of 128 (the table splits over the tensor axis): 40 + 32 + 1 = 73 -> 128.
  assert k == 32 and model.total_vocab == 128
  assert params["decoder"]["embed"]["embedding"].shape[0] == 128


def _full_forward_greedy(model, params, tokens, lengths, n, guidance=None):
  """Greedy codes by running the whole sequence each step (no cache): the reference. The sequence is
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
      logits = lu + guidance * (logits - lu)
    if i + 1 < n:
      seq = seq.at[:, i + 1].set(first + jnp.argmax(logits, -1).astype(jnp.int32))
    else:
      last = first + jnp.argmax(logits, -1).astype(jnp.int32)
  return np.asarray(jnp.concatenate([seq[:, 1:], last[:, None]], axis=1) - first)


@pytest.mark.parametrize("guidance", [None, 2.5])
def test_cached_drawing_equals_full_forward(model_and_params, guidance):
  model, params, _, tokens, lengths = model_and_params
  n = model.num_codes(S)
  got = image_tokens.draw_codes(
    model, params, tokens, lengths, jax.random.key(0), n_codes=n, sampler=Greedy(), guidance=guidance
  )
  want = _full_forward_greedy(model, params, tokens, lengths, n, guidance)
  assert got.shape == (4, n) and int(got.min()) >= 0 and int(got.max()) < model.codebook_size
  np.testing.assert_array_equal(np.asarray(got), want)


def test_guidance_one_is_conditional_and_zero_is_null(model_and_params):
  model, params, _, tokens, lengths = model_and_params
  n = model.num_codes(S)
  draw = lambda ln, g: np.asarray(
    image_tokens.draw_codes(model, params, tokens, ln, jax.random.key(1), n_codes=n, sampler=Greedy(), guidance=g)
  )
  np.testing.assert_array_equal(draw(lengths, 1.0), draw(lengths, None))
  # Scale 0 samples the null-condition logits: what the model draws with every caption dropped. It
  # must differ from the conditional drawing for the rows with a caption (else the test is vacuous).
  null = draw(jnp.zeros_like(lengths), None)
  np.testing.assert_array_equal(draw(lengths, 0.0), null)
  assert not np.array_equal(draw(lengths, None)[:3], null[:3])


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
  ],
)
def test_config_errors(shared_data_dir, key, value, match):
  c = config_files.load(CONFIG, "tiny")
  config_files.apply_overrides(c, {key: value})
  with pytest.raises(ValueError, match=match):
    model_class(c.model).check_config(c)


def test_trains_evaluates_and_resumes(shared_data_dir, tmp_path):
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(c, wd, progress=False)
  rows = read_metrics(wd)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == list(range(1, c.total_steps + 1))
  assert all(np.isfinite(r["train/loss"]) for r in train)
  assert train[-1]["train/loss"] < train[0]["train/loss"]
  assert {"train/image_token_accuracy", "train/codebook_used_fraction", "train/vq_recon_mse"} <= set(train[-1])
  final = [r for r in rows if "test/t2i_object_accuracy" in r][-1]
  for key in T2I_KEYS:
    assert 0.0 <= final[f"test/{key}"] <= 1.0
  first = workdir_lib.load(wd)
  with c.unlocked():
    c.total_steps += 2
  trainer.train_and_evaluate(c, wd, progress=False)
  assert workdir_lib.load(wd).step == first.step + 2
