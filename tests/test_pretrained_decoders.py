"""The decoder LM families of mmjax.pretrained (GPT-2, Llama, Gemma) against transformers itself.

Each family is pinned by a tiny random transformers model saved with save_pretrained: the loaded
mmjax Decoder reproduces its logits and final hidden state (relative error <= 1e-5), mmjax's KV
cache decodes the same 32 greedy tokens as transformers' generate, export reproduces every tensor
bit for bit (float32 and bfloat16 checkpoints), bad checkpoints fail with errors that name the
tensor, and a load with a sharded target puts only its shard on each device.
"""

import copy
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mmjax import pretrained, sharding
from mmjax.decoders.lm import Decoder
from mmjax.fusion.base import Conditioning
from mmjax.pretrained import gpt2, llama
from mmjax.sample.samplers import Greedy, decode

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB = 64
NEW_TOKENS = 32


def _configs():
  t = transformers
  return {
    # GPT-2: Conv1D + fused c_attn, learned positions, LayerNorm eps 1e-5, gelu_new, tied.
    "gpt2": (
      t.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2),
      t.GPT2LMHeadModel,
    ),
    # Llama: GQA (8 heads, 4 kv heads), head_dim 8 != 32 / 8, untied lm_head, non-default theta and eps.
    "llama": (
      t.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0},
        max_position_embeddings=128,
      ),
      t.LlamaForCausalLM,
    ),
    # Llama tied, with the optional attention and MLP biases.
    "llama_tied": (
      t.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
        max_position_embeddings=128,
      ),
      t.LlamaForCausalLM,
    ),
    # Gemma: MQA (1 kv head), head_dim 16 != 32 / 4, offset RMSNorm, scaled embeddings, GeGLU, tied.
    "gemma": (
      t.GemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
      ),
      t.GemmaForCausalLM,
    ),
  }


FAMILIES = ("gpt2", "llama", "llama_tied", "gemma")


def _randomise(model):
  """Weights far from their init, so that a misplaced norm weight or bias shows: 1-D parameters
  (norm weights at 1 or 0, biases at 0) get noise, matrices a std that makes the logits peaked."""
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1:
        p.add_(0.3 * noise)
      else:
        p.copy_(0.25 * noise)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """{family: (checkpoint dir, float32 eval-mode transformers model)}, built once for the module."""
  root = tmp_path_factory.mktemp("decoders")
  out = {}
  for name, (cfg, cls) in _configs().items():
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32).eval()
    _randomise(model)
    path = str(root / name)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


def _decoder(path):
  fields = pretrained.part(path, "decoder").fields
  return Decoder(**fields), fields


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.isfinite(a).all() and np.isfinite(b).all()
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _flat(tree):
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(nn.meta.unbox(dict(tree))).items()}


def _fields(family: str, **overrides) -> dict:
  cfg = dict(_configs()[family][0].to_dict(), **overrides)
  module = gpt2 if family == "gpt2" else llama
  fields = module.parts(cfg)["decoder"].fields
  return dict(fields, **{f"style.{k}": v for k, v in fields["style"].items()})


def _has(fields: dict, **want):
  got = {k.replace("__", "."): fields[k.replace("__", ".")] for k in want}
  assert got == {k.replace("__", "."): v for k, v in want.items()}


def test_fields():
  """The Decoder fields each family reads from config.json (the conversion details pinned)."""
  _has(
    _fields("gpt2"),
    vocab_size=VOCAB,
    posemb="learn",
    max_len=64,
    mlp_dim=128,
    mlp_activation="gelu",
    tie_embeddings=True,
    style=dict(norm="layernorm", norm_eps=1e-5, post_norm=False, attention_bias=True, mlp_bias=True, rope_theta=0.0),
  )
  _has(
    _fields("llama"),
    posemb="none",
    num_heads=8,
    num_kv_heads=4,
    head_dim=8,
    mlp_activation="swiglu",
    tie_embeddings=False,
    scale_embeddings=False,
    style__norm="rmsnorm",
    style__norm_eps=1e-5,
    style__rope_theta=1000.0,
    style__attention_bias=False,
  )
  _has(
    _fields("gemma"),
    num_kv_heads=1,
    head_dim=16,
    mlp_activation="geglu",
    tie_embeddings=True,
    scale_embeddings=True,
    style__norm="rmsnorm_offset",
    style__rope_theta=10000.0,
  )
  # transformers 4.x spellings: top-level rope_theta; Gemma's hidden_activation, legacy hidden_act "gelu".
  old = _fields("gemma", rope_parameters=None, rope_theta=500.0, hidden_activation=None, hidden_act="gelu")
  _has(old, mlp_activation="geglu", style__rope_theta=500.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(checkpoints, family):
  path, model = checkpoints[family]
  params = pretrained.load(path, "decoder")
  dec, _ = _decoder(path)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 12), dtype=np.int32)
  # Every parameter of the Decoder comes from the checkpoint, and nothing else.
  abstract = jax.eval_shape(lambda: dec.init(jax.random.key(0), tokens, Conditioning()))["params"]
  want = {k: v.shape for k, v in _flat(abstract).items()}
  assert {k: v.shape for k, v in _flat(params).items()} == want
  logits, inter = dec.apply(
    {"params": params},
    tokens,
    Conditioning(),
    capture_intermediates=lambda m, _: m.scope is not None and m.scope.path == ("norm",),
    mutable=["intermediates"],
  )
  hidden = inter["intermediates"]["norm"]["__call__"][0]
  with torch.no_grad():
    ids = torch.from_numpy(tokens.astype(np.int64))
    ref_logits = model(input_ids=ids).logits.numpy()
    ref_hidden = model.base_model(input_ids=ids).last_hidden_state.numpy()
  assert logits.shape == (2, 12, VOCAB)
  assert _rel(logits, ref_logits) <= 1e-5
  assert _rel(hidden, ref_hidden) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_with_kv_cache_matches_generate(checkpoints, family):
  path, model = checkpoints[family]
  params = pretrained.load(path, "decoder")
  dec, _ = _decoder(path)
  b, p = 2, 7
  prompt = np.random.default_rng(1).integers(0, VOCAB, (b, p), dtype=np.int32)
  cond = Conditioning()
  # The cache is sized by the token array of the init-mode decode call (as mmjax.sample.generate does).
  shapes = jax.eval_shape(
    lambda: dec.init(jax.random.key(0), jnp.zeros((b, p + NEW_TOKENS), jnp.int32), cond, 0, decode=True)["cache"]
  )

  @jax.jit
  def run(params, prompt):
    cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    # Prefill all but the last prompt token; the sampler feeds that one at position p - 1.
    _, mutated = dec.apply({"params": params, "cache": cache}, prompt[:, :-1], cond, 0, decode=True, mutable=["cache"])

    def step(tokens, cache, index):
      logits, mutated = dec.apply(
        {"params": params, "cache": cache}, tokens[:, None], cond, index, decode=True, mutable=["cache"]
      )
      return logits[:, 0], mutated["cache"]

    return decode(step, mutated["cache"], prompt[:, -1], p - 1, NEW_TOKENS, Greedy(), jax.random.key(0), None, 0)

  ours = np.asarray(run(params, jnp.asarray(prompt)))
  with torch.no_grad():
    ids = torch.from_numpy(prompt.astype(np.int64))
    ref = model.generate(
      ids,
      attention_mask=torch.ones_like(ids),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      eos_token_id=None,
      pad_token_id=0,
    )[:, p:].numpy()
  assert ref.shape == (b, NEW_TOKENS)
  np.testing.assert_array_equal(ours, ref)
  assert len(np.unique(ref)) > 3  # a degenerate model repeating one token would pin little


def _torch_tensors(path):
  from safetensors import safe_open

  out = {}
  for f in sorted(os.listdir(path)):
    if f.endswith(".safetensors"):
      with safe_open(os.path.join(path, f), "pt") as h:
        out.update({k: h.get_tensor(k) for k in h.keys()})
  return out


def _assert_bit_exact(a: dict, b: dict):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[a[k].dtype]
    assert torch.equal(a[k].view(bits), b[k].view(bits)), k


@pytest.mark.parametrize("family", FAMILIES)
def test_export_round_trip_is_bit_exact(checkpoints, family, tmp_path):
  path, model = checkpoints[family]
  bf16 = str(tmp_path / "bf16")
  copy.deepcopy(model).to(torch.bfloat16).save_pretrained(bf16)
  for source in (path, bf16):
    out = str(tmp_path / ("out_" + os.path.basename(source)))
    pretrained.export(out, {"decoder": pretrained.load(source, "decoder")}, source=source)
    _assert_bit_exact(_torch_tensors(out), _torch_tensors(source))
    with open(os.path.join(out, "config.json")) as f, open(os.path.join(source, "config.json")) as g:
      assert json.load(f) == json.load(g)
  assert next(iter(_torch_tensors(bf16).values())).dtype == torch.bfloat16


def _rewrite(src, dst, edit):
  shutil.copytree(src, dst)
  file = os.path.join(dst, "model.safetensors")
  tensors = safetensors_torch.load_file(file)
  edit(tensors)
  safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
  return dst


def test_errors(checkpoints, tmp_path):
  path, _ = checkpoints["llama"]
  # Unknown model_type.
  unknown = str(tmp_path / "unknown")
  shutil.copytree(path, unknown)
  cfg = json.load(open(os.path.join(unknown, "config.json")))
  with open(os.path.join(unknown, "config.json"), "w") as f:
    json.dump(dict(cfg, model_type="not_a_family"), f)
  with pytest.raises(ValueError, match="model_type 'not_a_family'"):
    pretrained.load(unknown, "decoder")
  # A missing tensor is named.
  gone = "model.layers.1.mlp.up_proj.weight"
  missing = _rewrite(path, str(tmp_path / "missing"), lambda t: t.pop(gone))
  with pytest.raises(KeyError, match=gone.replace(".", r"\.")):
    pretrained.load(missing, "decoder")
  # An integer tensor is named.
  ints = _rewrite(path, str(tmp_path / "ints"), lambda t: t.update({"model.norm.weight": t["model.norm.weight"].int()}))
  with pytest.raises(ValueError, match=r"model\.norm\.weight.*int32"):
    pretrained.load(ints, "decoder")
  # A target of another shape: the tensor and both shapes are named, before any data is read.
  dec, fields = _decoder(path)
  other = Decoder(**dict(fields, mlp_dim=40))
  abstract = jax.eval_shape(lambda: other.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), Conditioning()))
  target = {k: jax.ShapeDtypeStruct(v.shape, jnp.float32) for k, v in _flat(abstract["params"]).items()}
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj\.weight.*\(32, 64\).*\(32, 40\)"):
    pretrained.load(path, "decoder", target=target)
  # Architecture options mmjax's layers do not have are errors, not silently different models.
  cfg = _configs()
  scaled = dict(cfg["llama"][0].to_dict(), rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0})
  with pytest.raises(ValueError, match="llama3"):
    llama.parts(scaled)
  with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
    gpt2.parts(dict(cfg["gpt2"][0].to_dict(), scale_attn_by_inverse_layer_idx=True))


def test_gpt2_hub_layout(checkpoints, tmp_path):
  """The original Hub GPT-2 files: no "transformer." prefix, plus causal-mask buffers `h.N.attn.bias`
  that are not parameters. Given the tensor names, the family maps them to the same parameters."""
  from mmjax.pretrained import checkpoint, convert

  path, model = checkpoints["gpt2"]
  hub = str(tmp_path / "hub")
  shutil.copytree(path, hub)
  file = os.path.join(hub, "model.safetensors")
  tensors = {k.removeprefix("transformer."): v for k, v in safetensors_torch.load_file(file).items()}
  n = model.config.n_positions
  for i in range(model.config.n_layer):
    tensors[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
  safetensors_torch.save_file(tensors, file, metadata={"format": "pt"})
  reader = checkpoint.Reader(hub)
  part = gpt2.parts(checkpoint.read_config(hub), reader.names())["decoder"]
  ours = _flat(convert.load_part(part, reader, hub))
  want = _flat(pretrained.load(path, "decoder"))
  assert sorted(ours) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(ours[k], want[k])


@pytest.mark.devices(8)
def test_load_into_shardings(checkpoints):
  """A load with a sharded target creates each array in its sharding: every device holds only its
  slice (the embedding rows split 4 ways over tensor, its columns 2 ways over fsdp)."""
  path, _ = checkpoints["llama"]
  dec, _ = _decoder(path)
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  boxed = jax.eval_shape(lambda: dec.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32), Conditioning()))["params"]
  shardings = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, sharding.DEFAULT_RULES)
  flat_s = {"/".join(k): s for k, s in traverse_util.flatten_dict(shardings).items()}
  target = {k: jax.ShapeDtypeStruct(v.shape, jnp.float32, sharding=flat_s[k]) for k, v in _flat(boxed).items()}
  sharded_tree, plain_tree = pretrained.load(path, "decoder", target=target), pretrained.load(path, "decoder")
  loaded, plain = _flat(sharded_tree), _flat(plain_tree)
  assert sorted(loaded) == sorted(plain)
  split = 0
  for k, arr in loaded.items():
    assert arr.sharding == flat_s[k], k
    assert len(arr.addressable_shards) == 8
    for shard in arr.addressable_shards:
      assert shard.data.shape == flat_s[k].shard_shape(arr.shape), k
      np.testing.assert_array_equal(np.asarray(shard.data), plain[k][shard.index])
    split += flat_s[k].shard_shape(arr.shape) != arr.shape
  emb = loaded["embed/embedding"]
  assert emb.shape == (VOCAB, 32)
  assert {s.data.shape for s in emb.addressable_shards} == {(VOCAB // 4, 16)}
  assert split > len(loaded) // 2  # most parameters are really split, not replicated
  # The sharded parameters run: the same logits as the host copy.
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, VOCAB, (2, 8), dtype=np.int32))
  with mesh:
    ours = jax.jit(lambda p: dec.apply({"params": p}, tokens, Conditioning()))(sharded_tree)
  assert _rel(ours, dec.apply({"params": plain_tree}, tokens, Conditioning())) <= 1e-5
