"""BERT (text_encoder + text_pooler) and Whisper (audio_encoder + decoder) checkpoints: tiny random
transformers models saved with save_pretrained, loaded into mmjax's modules and compared with
transformers' outputs, exported back bit for bit, and the errors that name tensors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mmjax import pretrained, registry
from mmjax.decoders.lm import Decoder
from mmjax.encoders.audio import AudioEncoder, sincos_1d, whisper_log_mel
from mmjax.fusion.base import Conditioning
from mmjax.pretrained import checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-5


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "NaN / inf in mmjax's output"
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def randomise(model, seed=0):
  """Biases and norm weights away from their 0 / 1 init, so a mapping that drops one shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      elif "norm" in name.lower() and name.endswith("weight"):
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
  return model.eval()


def save(model, path, dtype=None):
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(str(path))
  return str(path)


def module_of(part, **overrides):
  cls = Decoder if part.module == "decoder" else registry.get("encoders", part.module)
  return cls(**{**part.fields, **overrides})


def assert_covers_init(module, args, params):
  """The loaded tree has exactly the parameters (and shapes) the module creates."""
  init = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args)["params"])
  want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(init, sep="/").items()}
  got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  assert got == want


def assert_round_trip(source, params, out):
  pretrained.export(out, params, source=source)
  a, b = checkpoint.Reader(source), checkpoint.Reader(out)
  assert a.names() == b.names()
  for name in a.names():
    assert a.info(name).dtype == b.info(name).dtype, name
    np.testing.assert_array_equal(np.asarray(b.get(name)).view(np.uint8), np.asarray(a.get(name)).view(np.uint8), name)


# -- BERT --------------------------------------------------------------------------------------------------------------


def bert_model(architecture="BertModel"):
  cfg = transformers.BertConfig(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=24,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  torch.manual_seed(0)
  return randomise(getattr(transformers, architecture)(cfg))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  return save(bert_model(), tmp_path_factory.mktemp("bert"))


def test_bert_matches_transformers(bert_dir):
  found = pretrained.parts(bert_dir)
  assert sorted(found) == ["text_encoder", "text_pooler"]
  part = found["text_encoder"]
  assert part.module == "text"
  assert part.fields["style"] == dict(
    norm="layernorm", norm_eps=1e-12, post_norm=True, attention_bias=True, mlp_bias=True
  )
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 99, (3, 12)).astype(np.int32)
  lengths = np.array([12, 7, 3], np.int32)
  valid = np.arange(12)[None] < lengths[:, None]
  ids = np.where(valid, ids, 0)
  enc = module_of(part, implementation="xla")
  params = pretrained.load(bert_dir, "text_encoder")
  assert_covers_init(enc, (ids, lengths), params)
  ours = np.asarray(enc.apply({"params": params}, ids, lengths))
  model = transformers.BertModel.from_pretrained(bert_dir).eval()
  with torch.no_grad():
    ref = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(valid, dtype=torch.long))
  assert rel_err(ours[valid], ref.last_hidden_state.numpy()[valid]) <= TOL
  pooler = module_of(found["text_pooler"])
  pooled = np.asarray(pooler.apply({"params": pretrained.load(bert_dir, "text_pooler")}, ours))
  assert rel_err(pooled, ref.pooler_output.numpy()) <= TOL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bert_export_round_trip(tmp_path, dtype):
  src = save(bert_model(), tmp_path / "src", getattr(torch, dtype))
  params = {name: pretrained.load(src, name) for name in pretrained.parts(src)}
  # Every row of token_type_embeddings is a parameter (row 0 is the one the encoder adds).
  assert params["text_encoder"]["type_embed"].shape == (2, 32)
  assert_round_trip(src, params, str(tmp_path / "out"))
  with pytest.raises(KeyError, match=r"pooler\.dense"):
    pretrained.export(str(tmp_path / "no_pooler"), {"text_encoder": params["text_encoder"]}, source=src)


def test_bert_task_model_prefix_and_head(tmp_path):
  src = save(bert_model("BertForSequenceClassification"), tmp_path / "src")
  params = {name: pretrained.load(src, name) for name in pretrained.parts(src)}
  # The tower sits under "bert."; the classifier has no mmjax part, so export names it.
  with pytest.raises(KeyError, match=r"classifier\.(bias|weight)"):
    pretrained.export(str(tmp_path / "out"), params, source=src)
  assert "text_pooler" not in pretrained.parts(save(bert_model("BertForMaskedLM"), tmp_path / "mlm"))


def test_bert_errors_name_tensors(bert_dir, tmp_path):
  reader = checkpoint.Reader(bert_dir)
  missing = "encoder.layer.1.output.dense.weight"
  broken = str(tmp_path / "broken")
  checkpoint.write(broken, {n: reader.get(n) for n in reader.names() if n != missing}, checkpoint.read_config(bert_dir))
  with pytest.raises(KeyError, match=rf"{missing}.*block_1/mlp/wo/kernel"):
    pretrained.load(broken, "text_encoder")
  # A model of another shape: the error names the tensor and both shapes.
  part = pretrained.part(bert_dir, "text_encoder")
  other = module_of(part, mlp_dim=48)
  ids, lengths = np.ones((1, 4), np.int32), np.array([4], np.int32)
  abstract = nn.meta.unbox(jax.eval_shape(other.init, jax.random.key(0), ids, lengths)["params"])
  target = traverse_util.flatten_dict(abstract, sep="/")
  with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*\(32, 64\).*\(32, 48\)"):
    pretrained.load(bert_dir, "text_encoder", target=target)


# -- Whisper -----------------------------------------------------------------------------------------------------------

N_MELS, SOURCE_POSITIONS = 80, 50  # 100 frames: 1 s of 16 kHz audio at hop 160


def whisper_model(architecture="WhisperModel"):
  cfg = transformers.WhisperConfig(
    vocab_size=64,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    num_mel_bins=N_MELS,
    max_source_positions=SOURCE_POSITIONS,
    max_target_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    begin_suppress_tokens=None,
    suppress_tokens=None,
  )
  torch.manual_seed(0)
  model = getattr(transformers, architecture)(cfg)
  table = model.get_encoder().embed_positions.weight
  # The checkpoint's table is Whisper's sin-cos codes, which AudioEncoder's learned table starts from
  # (up to torch's float32 angles).
  np.testing.assert_allclose(table.detach().numpy(), sincos_1d(SOURCE_POSITIONS, 32), atol=1e-5)
  with torch.no_grad():
    table.add_(0.01 * torch.randn(table.shape))  # and is read from the checkpoint, not recomputed
  return randomise(model)


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
  path = save(whisper_model(), tmp_path_factory.mktemp("whisper"))
  return path, transformers.WhisperModel.from_pretrained(path).eval()


def test_whisper_encoder_matches_transformers(whisper):
  path, model = whisper
  part = pretrained.part(path, "audio_encoder")
  assert part.module == "audio" and part.fields["frontend"] == "whisper" and part.fields["max_len"] == SOURCE_POSITIONS
  feats = np.random.default_rng(1).normal(size=(2, N_MELS, 2 * SOURCE_POSITIONS)).astype(np.float32)
  enc = module_of(part, frontend="whisper_features", implementation="xla")
  params = pretrained.load(path, "audio_encoder")
  assert_covers_init(enc, (feats,), params)
  np.testing.assert_array_equal(params["block_0"]["self_attention"]["key"]["bias"], 0.0)
  ours, n = enc.apply({"params": params}, feats)
  assert n is None
  with torch.no_grad():
    ref = model.encoder(torch.tensor(feats)).last_hidden_state.numpy()
  assert rel_err(ours, ref) <= TOL


def test_whisper_waveform_frontend_matches_feature_extractor(whisper):
  """frontend "whisper" on waveforms = WhisperFeatureExtractor + WhisperEncoder (padding to the window included)."""
  path, model = whisper
  fe = transformers.WhisperFeatureExtractor(
    feature_size=N_MELS, sampling_rate=16_000, hop_length=160, chunk_length=1, n_fft=400
  )
  rng = np.random.default_rng(2)
  lengths = [12_000, 9_000]
  clips = [(0.1 * rng.normal(size=n)).astype(np.float32) for n in lengths]
  feats = fe(clips, sampling_rate=16_000, return_tensors="np").input_features  # [2, 80, 100]
  wave = np.zeros((2, max(lengths)), np.float32)
  for row, clip in zip(wave, clips):
    row[: len(clip)] = clip
  padded = np.pad(wave, ((0, 0), (0, 16_000 - wave.shape[1])))
  assert rel_err(np.swapaxes(np.asarray(whisper_log_mel(padded)), 1, 2), feats) <= TOL
  enc = module_of(pretrained.part(path, "audio_encoder"), implementation="xla")
  ours, _ = enc.apply({"params": pretrained.load(path, "audio_encoder")}, wave)
  with torch.no_grad():
    ref = model.encoder(torch.tensor(feats)).last_hidden_state.numpy()
  assert rel_err(ours, ref) <= TOL
  with pytest.raises(ValueError, match="longer than the 16000 samples"):
    enc.apply({"params": pretrained.load(path, "audio_encoder")}, np.zeros((1, 16_001), np.float32))


def test_whisper_decoder_matches_transformers(whisper):
  path, model = whisper
  part = pretrained.part(path, "decoder")
  dec = module_of(part, cross_attention_every=1, implementation="xla")
  memory = np.random.default_rng(3).normal(size=(2, SOURCE_POSITIONS, 32)).astype(np.float32)
  tokens = np.random.default_rng(4).integers(0, 64, (2, 7)).astype(np.int32)
  cond = Conditioning(memory=jnp.asarray(memory))
  params = pretrained.load(path, "decoder")
  assert_covers_init(dec, (tokens, cond), params)
  logits = np.asarray(dec.apply({"params": params}, tokens, cond))
  with torch.no_grad():
    hidden = model.decoder(
      input_ids=torch.tensor(tokens, dtype=torch.long), encoder_hidden_states=torch.tensor(memory)
    ).last_hidden_state
    ref = (hidden @ model.decoder.embed_tokens.weight.T).numpy()
  assert rel_err(logits, ref) <= TOL


@pytest.mark.parametrize(
  "architecture,dtype",
  [("WhisperModel", "float32"), ("WhisperModel", "bfloat16"), ("WhisperForConditionalGeneration", "float32")],
)
def test_whisper_export_round_trip(tmp_path, architecture, dtype):
  src = save(whisper_model(architecture), tmp_path / "src", getattr(torch, dtype))
  params = {name: pretrained.load(src, name) for name in pretrained.parts(src)}
  assert sorted(params) == ["audio_encoder", "decoder"]
  assert_round_trip(src, params, str(tmp_path / "out"))  # the zero key biases are not written
  # The encoder alone does not make a Whisper checkpoint: export names the decoder's tensors.
  with pytest.raises(KeyError, match=r"decoder\.embed_positions\.weight"):
    pretrained.export(str(tmp_path / "enc"), {"audio_encoder": params["audio_encoder"]}, source=src)


def test_whisper_errors_name_tensors(whisper, tmp_path):
  path, _ = whisper
  reader = checkpoint.Reader(path)
  missing = "encoder.conv2.weight"
  broken = str(tmp_path / "broken")
  checkpoint.write(broken, {n: reader.get(n) for n in reader.names() if n != missing}, checkpoint.read_config(path))
  with pytest.raises(KeyError, match=rf"{missing}.*conv_1/kernel/kernel"):
    pretrained.load(broken, "audio_encoder")
  enc = module_of(pretrained.part(path, "audio_encoder"), n_mels=40, frontend="whisper_features")
  abstract = nn.meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), np.zeros((1, 40, 100), np.float32))["params"])
  with pytest.raises(ValueError, match=r"encoder\.conv1\.weight.*\(3, 80, 32\).*\(3, 40, 32\)"):
    pretrained.load(path, "audio_encoder", target=traverse_util.flatten_dict(abstract, sep="/"))


def test_audio_encoder_learned_positions_and_features_input():
  """posemb "learn" starts from the fixed codes (same output as "sincos"); features input is checked."""
  feats = np.random.default_rng(5).normal(size=(2, 8, 20)).astype(np.float32)
  kw = dict(width=16, depth=1, num_heads=2, mlp_dim=32, n_mels=8, frontend="whisper_features", implementation="xla")
  fixed, learned = AudioEncoder(**kw), AudioEncoder(**kw, posemb="learn", max_len=12)
  variables = nn.meta.unbox(learned.init(jax.random.key(0), feats))
  assert variables["params"]["posemb"].shape == (12, 16)
  a, _ = learned.apply(variables, feats)
  b, _ = fixed.apply({"params": {k: v for k, v in variables["params"].items() if k != "posemb"}}, feats)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  _, n = learned.apply(variables, feats, np.array([20, 7], np.int32))
  np.testing.assert_array_equal(n, [10, 4])
  with pytest.raises(ValueError, match="exceed max_len=12"):
    learned.apply(variables, np.zeros((1, 8, 26), np.float32))
  with pytest.raises(ValueError, match=r"features \[B, n_mels=8, frames\]"):
    learned.apply(variables, np.zeros((1, 20, 8), np.float32))
