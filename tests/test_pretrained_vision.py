"""CLIP, SigLIP and ViT checkpoints (tiny random transformers models saved to disk) against mmjax's
modules built from Part.fields: hidden states, embeddings and logits within 1e-5 relative error;
export round trips bit for bit (float32 and bfloat16); wrong or missing tensors are named."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import linen as nn, traverse_util

from mmjax import pretrained
from mmjax.encoders import TextEncoder, ViT
from mmjax.encoders.pooling import TokenHead
from mmjax.models.contrastive import ContrastiveModel, pairwise_logits
from mmjax.models.kind import base_model_config
from mmjax.pretrained import checkpoint, clip as clip_family
from mmjax.pretrained.vit import patch_embedding

torch = pytest.importorskip("torch")


transformers = pytest.importorskip("transformers")

TOL = 1e-5
B, IMAGE, PATCH, L, V = 3, 16, 8, 10, 99


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert not np.isnan(a).any()
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def randomize(model, seed=0):
  """Every parameter random and nonzero (LayerNorm weights around 1, not 1; biases, class token,
  probe, logit scale / bias away from their inits), so a tensor mapped to the wrong place shows."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if name.endswith("logit_scale"):
        p.copy_(np.log(5.0) + 0.3 * r)
      elif p.ndim >= 2:
        fan_in = int(np.prod(p.shape[1:])) if p.ndim == 4 else p.shape[-1]
        p.copy_(r / np.sqrt(fan_in))
      elif "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * r)
      else:
        p.copy_(0.3 * r)
  return model.eval()


def tower(**kw):
  base = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
  return {**base, **kw}


def save(model, path, dtype=None):
  if dtype is not None:
    model = model.to(dtype)
  model.save_pretrained(str(path))
  return str(path)


def abstract(module, *args):
  """{path: ShapeDtypeStruct} of the module's parameters: the `target` a load checks against."""
  shapes = jax.eval_shape(lambda: nn.meta.unbox(module.init(jax.random.key(0), *args)))["params"]
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(shapes).items()}


def load(path, name, module, *args):
  """Part `name` loaded against `module`'s own parameter shapes: every parameter must be mapped."""
  return pretrained.load(path, name, target=abstract(module, *args))


def images_and_pixels(mean, std, seed=0):
  """Images in [0, 1] for mmjax ([B, H, W, 3]) and the processor's normalised NCHW pixels for HF."""
  x = np.random.default_rng(seed).uniform(0, 1, (B, IMAGE, IMAGE, 3)).astype(np.float32)
  pix = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return x, torch.from_numpy(np.ascontiguousarray(pix.transpose(0, 3, 1, 2)))


def contrastive_module(part):
  c = part.fields["config"]
  config = ml_collections.ConfigDict({**base_model_config().to_dict(), **c, "attention_implementation": "xla"})
  return ContrastiveModel(config, part.fields["vocab_size"])


def assert_round_trip(src, params_by_part, out):
  """Exporting the loaded parts reproduces every tensor of the source, dtype and bits."""
  pretrained.export(out, params_by_part, source=src)
  a, b = checkpoint.Reader(src), checkpoint.Reader(out)
  assert sorted(a.names()) == sorted(b.names())
  for n in a.names():
    x, y = a.get(n), b.get(n)
    assert x.dtype == y.dtype and x.shape == y.shape, n
    assert x.tobytes() == y.tobytes(), n
  assert checkpoint.read_config(out) == checkpoint.read_config(src)


# -- conversion details --------------------------------------------------------------------------


def test_patch_embedding_layout():
  """Conv weight [D, C, p, p] -> Dense kernel over einops "(p q c)" patches: kernel[(i p + j) C + c, d]
  = weight[d, c, i, j]; so a strided conv equals the Dense on the patches, and back is exact."""
  d, c, p = 5, 3, 4
  w = np.random.default_rng(0).normal(size=(d, c, p, p)).astype(np.float32)
  (e,) = patch_embedding("patch_embed", "conv", p, c, bias=False)
  (k,) = e.to_mm([w])
  assert k.shape == (p * p * c, d) == e.mm_shapes([w.shape])[0]
  i, j, ch, o = 2, 3, 1, 4
  assert k[(i * p + j) * c + ch, o] == w[o, ch, i, j]
  assert e.to_hf([k])[0].tobytes() == w.tobytes()
  x = np.random.default_rng(1).normal(size=(1, 2 * p, 2 * p, c)).astype(np.float32)
  conv = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(w), stride=p)
  patches = x.reshape(1, 2, p, 2, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(1, 4, p * p * c)
  assert rel(patches @ k, conv.numpy().reshape(1, d, 4).transpose(0, 2, 1)) < TOL


# -- CLIP ----------------------------------------------------------------------------------------


def clip_model(eos_token_id):
  cfg = transformers.CLIPConfig(
    text_config=tower(vocab_size=V, max_position_embeddings=16, eos_token_id=eos_token_id, bos_token_id=V - 2),
    vision_config=tower(image_size=IMAGE, patch_size=PATCH),
    projection_dim=24,
  )
  return randomize(transformers.CLIPModel._from_config(cfg, attn_implementation="eager"))


def clip_text(seed=0):
  """[BOS, t.., EOS, pad..] with the EOS (id V - 1, the highest) at lengths - 1."""
  rng = np.random.default_rng(seed)
  lengths = np.array([L, 4, 7], np.int32)
  tokens = rng.integers(1, V - 2, (B, L)).astype(np.int32)
  tokens[:, 0] = V - 2
  tokens[np.arange(B), lengths - 1] = V - 1
  tokens[np.arange(L)[None] >= lengths[:, None]] = 0
  return tokens, lengths


# eos_token_id 2 is the legacy config (HF pools at the argmax of the ids); otherwise at the first EOS.
@pytest.mark.parametrize("eos_token_id", [2, V - 1])
def test_clip(tmp_path, eos_token_id):
  model = clip_model(eos_token_id)
  path = save(model, tmp_path / "clip")
  parts = pretrained.parts(path)
  assert sorted(parts) == ["contrastive", "image_encoder", "text_encoder"]
  vf, tf = parts["image_encoder"].fields, parts["text_encoder"].fields
  assert (vf["class_token"], vf["patch_bias"], vf["pre_norm"], vf["mlp_activation"]) == (
    True,
    False,
    True,
    "quick_gelu",
  )
  assert vf["style"]["norm_eps"] == tf["style"]["norm_eps"] == 1e-5 and tf["causal"] is True
  assert vf["pixel_mean"] == (0.48145466, 0.4578275, 0.40821073)
  x, pix = images_and_pixels(vf["pixel_mean"], vf["pixel_std"])
  tokens, lengths = clip_text()
  mask = torch.from_numpy((np.arange(L)[None] < lengths[:, None]).astype(np.int64))
  ids = torch.from_numpy(tokens.astype(np.int64))
  with torch.no_grad():
    vis = model.vision_model(pixel_values=pix)
    txt = model.text_model(input_ids=ids, attention_mask=mask)
    out = model(input_ids=ids, pixel_values=pix, attention_mask=mask)
    # CLIP's last_hidden_state precedes post_layernorm (HF applies it to the pooled class token only).
    vis_tokens = model.vision_model.post_layernorm(vis.last_hidden_state).numpy()

  vit = ViT(**vf, implementation="xla")
  p_img = load(path, "image_encoder", vit, x)
  ours = vit.apply({"params": p_img}, x)
  assert rel(ours, vis_tokens) < TOL
  assert rel(ours[:, 0], vis.pooler_output) < TOL

  text = TextEncoder(**tf, implementation="xla")
  p_txt = load(path, "text_encoder", text, tokens, lengths)
  ours = np.asarray(text.apply({"params": p_txt}, tokens, lengths))
  valid = np.arange(L)[None] < lengths[:, None]
  assert rel(ours[valid], txt.last_hidden_state.numpy()[valid]) < TOL

  whole = contrastive_module(parts["contrastive"])
  assert parts["contrastive"].fields["config"]["text_pool"] == "eos"
  # The whole model frames a caption itself, as the pipeline gives it (no BOS / EOS): the same ids.
  caption, n = tokens[:, 1:], lengths - 2
  p_all = load(path, "contrastive", whole, x, caption, n)
  img, txt_emb, scale, bias = whole.apply({"params": p_all}, x, caption, n)
  assert bias is None
  assert rel(img, out.image_embeds) < TOL
  assert rel(txt_emb, out.text_embeds) < TOL
  assert rel(pairwise_logits(img, txt_emb, scale, bias), out.logits_per_image) < TOL

  assert_round_trip(path, {"contrastive": p_all}, str(tmp_path / "out"))
  # The towers alone leave the projections and logit_scale out: an error, not a partial checkpoint.
  with pytest.raises(KeyError, match="pass all parts"):
    pretrained.export(str(tmp_path / "out2"), {"image_encoder": p_img, "text_encoder": p_txt}, source=path)


# -- SigLIP --------------------------------------------------------------------------------------


def test_siglip(tmp_path):
  cfg = transformers.SiglipConfig(
    text_config=tower(vocab_size=V, max_position_embeddings=16, projection_size=32),
    vision_config=tower(image_size=IMAGE, patch_size=PATCH),
  )
  model = randomize(transformers.SiglipModel._from_config(cfg, attn_implementation="eager"), seed=1)
  with torch.no_grad():  # the logit bias is -10-ish after training; any nonzero value tests its mapping
    model.logit_bias.fill_(-2.5)
  path = save(model, tmp_path / "siglip")
  parts = pretrained.parts(path)
  assert sorted(parts) == ["contrastive", "image_encoder", "text_encoder"]
  vf, tf = parts["image_encoder"].fields, parts["text_encoder"].fields
  assert (vf["class_token"], vf["patch_bias"], vf["pre_norm"], vf["mlp_activation"]) == (False, True, False, "gelu")
  assert vf["style"]["norm_eps"] == tf["style"]["norm_eps"] == 1e-6 and tf["causal"] is False
  x, pix = images_and_pixels(vf["pixel_mean"], vf["pixel_std"], seed=1)
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, V, (B, L)).astype(np.int32)
  lengths = np.array([L, 4, 7], np.int32)
  mask = torch.from_numpy((np.arange(L)[None] < lengths[:, None]).astype(np.int64))
  ids = torch.from_numpy(tokens.astype(np.int64))
  with torch.no_grad():
    vis = model.vision_model(pixel_values=pix)
    txt = model.text_model(input_ids=ids, attention_mask=mask)

  vit = ViT(**vf, implementation="xla")
  ours = vit.apply({"params": load(path, "image_encoder", vit, x)}, x)
  assert rel(ours, vis.last_hidden_state) < TOL  # SigLIP's last_hidden_state is after post_layernorm

  text = TextEncoder(**tf, implementation="xla")
  p_txt = load(path, "text_encoder", text, tokens, lengths)
  ours = np.asarray(text.apply({"params": p_txt}, tokens, lengths))
  valid = np.arange(L)[None] < lengths[:, None]
  assert rel(ours[valid], txt.last_hidden_state.numpy()[valid]) < TOL  # HF's padding mask = our lengths

  whole = contrastive_module(parts["contrastive"])
  c = parts["contrastive"].fields["config"]
  assert (c["image_pool"], c["text_pool"], c["image_proj"], c["text_proj"]) == ("map", "last", "none", "linear_bias")
  # A caption as the pipeline gives it (tokens and lengths) is read as SigLIP's processor writes it:
  # padded with the pad id to the tower's full length, no mask, pooled at the last (a padded) position.
  pad = c["text_ids"]["pad"]
  padded = np.full((B, 16), pad, np.int64)
  padded[:, :L] = np.where(np.arange(L)[None] < lengths[:, None], tokens, pad)
  with torch.no_grad():
    ref = model(input_ids=torch.from_numpy(padded), pixel_values=pix)
  p_all = load(path, "contrastive", whole, x, tokens, lengths)
  img, txt_emb, scale, bias = whole.apply({"params": p_all}, x, tokens, lengths)
  assert rel(img, ref.image_embeds) < TOL  # the MAP head's pooled output, unprojected
  assert rel(txt_emb, ref.text_embeds) < TOL
  assert rel(pairwise_logits(img, txt_emb, scale, bias), ref.logits_per_image) < TOL

  assert_round_trip(path, {"contrastive": p_all}, str(tmp_path / "out"))


# -- ViT -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["ViTModel", "ViTForImageClassification"])
def test_vit(tmp_path, arch):
  cfg = transformers.ViTConfig(**tower(image_size=IMAGE, patch_size=PATCH), num_labels=5)
  model = randomize(getattr(transformers, arch)._from_config(cfg, attn_implementation="eager"), seed=2)
  path = save(model, tmp_path / "vit")
  parts = pretrained.parts(path)
  head = "pooler" if arch == "ViTModel" else "classifier"
  assert sorted(parts) == sorted(["image_encoder", head])
  vf = parts["image_encoder"].fields
  assert (vf["class_token"], vf["patch_bias"], vf["pre_norm"], vf["mlp_activation"]) == (
    True,
    True,
    False,
    "gelu_exact",
  )
  assert vf["style"]["norm_eps"] == 1e-12
  x, pix = images_and_pixels(vf["pixel_mean"], vf["pixel_std"], seed=2)
  with torch.no_grad():
    out = model(pixel_values=pix)
    hidden = (model if arch == "ViTModel" else model.vit)(pixel_values=pix).last_hidden_state

  vit = ViT(**vf, implementation="xla")
  p_img = load(path, "image_encoder", vit, x)
  tokens = vit.apply({"params": p_img}, x)
  assert rel(tokens, hidden) < TOL  # last_hidden_state is after the final layernorm
  mod = TokenHead(**parts[head].fields)
  p_head = load(path, head, mod, tokens)
  pooled = mod.apply({"params": p_head}, tokens)
  assert rel(pooled, out.pooler_output if head == "pooler" else out.logits) < TOL
  assert_round_trip(path, {"image_encoder": p_img, head: p_head}, str(tmp_path / "out"))


# -- bfloat16 and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["clip", "siglip", "vit"])
def test_bfloat16_round_trip(tmp_path, family):
  """A bfloat16 checkpoint loads (as float32) and exports back to the same bfloat16 bits."""
  if family == "clip":
    model = clip_model(V - 1)
  elif family == "siglip":
    cfg = transformers.SiglipConfig(
      text_config=tower(vocab_size=V, max_position_embeddings=16), vision_config=tower(image_size=IMAGE, patch_size=8)
    )
    model = randomize(transformers.SiglipModel._from_config(cfg), seed=3)
  else:
    model = randomize(transformers.ViTModel(transformers.ViTConfig(**tower(image_size=IMAGE, patch_size=PATCH))))
  path = save(model, tmp_path / "src", torch.bfloat16)
  assert checkpoint.Reader(path).info(checkpoint.Reader(path).names()[0]).dtype.name == "bfloat16"
  names = {"vit": ["image_encoder", "pooler"]}.get(family, ["contrastive"])
  params = {n: pretrained.load(path, n) for n in names}
  assert all(v.dtype == np.float32 for p in params.values() for v in jax.tree.leaves(p))
  assert_round_trip(path, params, str(tmp_path / "out"))


def test_wrong_and_missing_tensors(tmp_path):
  cfg = transformers.SiglipConfig(
    text_config=tower(vocab_size=V, max_position_embeddings=16), vision_config=tower(image_size=IMAGE, patch_size=8)
  )
  path = save(randomize(transformers.SiglipModel._from_config(cfg)), tmp_path / "siglip")
  whole = contrastive_module(pretrained.parts(path)["contrastive"])
  x = np.zeros((1, IMAGE, IMAGE, 3), np.float32)
  tokens, lengths = np.ones((1, 4), np.int32), np.full((1,), 4, np.int32)
  target = abstract(whole, x, tokens, lengths)
  reader = checkpoint.Reader(path)
  tensors = {n: reader.get(n) for n in reader.names()}
  config = checkpoint.read_config(path)

  bad = str(tmp_path / "bad")
  fc1 = "vision_model.encoder.layers.1.mlp.fc1.weight"
  checkpoint.write(bad, {**tensors, fc1: np.zeros((40, 32), np.float32)}, config)
  with pytest.raises(ValueError) as e:
    pretrained.load(bad, "contrastive", target=target)
  assert fc1 in str(e.value) and "(32, 40)" in str(e.value) and "(32, 37)" in str(e.value)

  bad = str(tmp_path / "bad_in_proj")
  name = "vision_model.head.attention.in_proj_weight"
  checkpoint.write(bad, {**tensors, name: np.zeros((96, 24), np.float32)}, config)
  with pytest.raises(ValueError) as e:
    pretrained.load(bad, "contrastive", target=target)
  assert name in str(e.value) and "(24, 4, 8)" in str(e.value) and "(32, 4, 8)" in str(e.value)

  missing = str(tmp_path / "missing")
  checkpoint.write(missing, {n: t for n, t in tensors.items() if n != "vision_model.head.probe"}, config)
  with pytest.raises(KeyError, match="vision_model.head.probe"):
    pretrained.load(missing, "contrastive")


def test_siglip_without_head_and_unknown_vit(tmp_path):
  """A SigLIP without its MAP head has towers but no whole model; unsupported ViT heads are named."""
  cfg = {"model_type": "siglip", "vision_config": {"vision_use_head": False}, "text_config": {}}
  assert sorted(clip_family.parts(cfg)) == ["image_encoder", "text_encoder"]
  os.makedirs(tmp_path / "mim")
  with open(tmp_path / "mim" / "config.json", "w") as f:
    json.dump({"model_type": "vit", "architectures": ["ViTForMaskedImageModeling"], **tower(patch_size=8)}, f)
  with pytest.raises(ValueError, match="ViTForMaskedImageModeling"):
    pretrained.parts(str(tmp_path / "mim"))
