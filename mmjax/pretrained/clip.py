"""CLIP and SigLIP checkpoints (model_type "clip" / "siglip": Hugging Face CLIPModel / SiglipModel)
as mmjax parts.

  "image_encoder"  mmjax.encoders.ViT. CLIP: class token (`class_embedding`), patch convolution
                   without bias, learned positions (class position first), `pre_layrnorm` as the
                   ViT's pre_norm, QuickGELU, LayerNorm eps 1e-5. SigLIP: no class token, patch
                   bias, tanh GELU, eps 1e-6. Both end with `post_layernorm` as the ViT's final norm
                   applied to every token; note that CLIP's last_hidden_state is taken *before*
                   post_layernorm (which HF applies to the pooled class token only), SigLIP's after.
  "text_encoder"   mmjax.encoders.TextEncoder. CLIP attends causally (causal=True); SigLIP
                   bidirectionally. Both end with `final_layer_norm`.
  "contrastive"    the whole model as config.model.kind="contrastive" (mmjax.models.contrastive):
                   both towers plus the heads (pooling, projections, logit_scale, SigLIP's
                   logit_bias), so a checkpoint loads as a trainable model and exports back. Its
                   fields are ContrastiveModel's constructor fields: {"config": the config.model
                   keys of the kind (merge into mmjax.models.kind.base_model_config()),
                   "vocab_size": the text vocabulary}; its parameter paths are the whole model's.

Pooling as the references do it:
  CLIP image: the class token after post_layernorm (image_pool="cls"), then `visual_projection`.
  CLIP text: the EOS token (text_pool="eos": the token at lengths - 1). HF finds it from the ids
    (argmax of the ids for legacy configs with eos_token_id == 2, where the EOS has the highest id;
    else the first eos_token_id); the two agree when each text is [BOS, ..., EOS] and `lengths`
    counts through its EOS, which is what callers must pass. Then `text_projection`.
  SigLIP image: the MAP head (`vision_model.head`: a probe attending over the tokens through a
    torch nn.MultiheadAttention with packed in_proj_weight [3D, D], then LayerNorm and a residual
    MLP; image_pool="map"), no projection (image_proj="none").
  SigLIP text: the sequence's final position whatever the padding (text_pool="last"), then
    `text_model.head` (a Linear with bias: text_proj="linear_bias"). SigLIP texts are padded to a
    fixed length and read in full (HF's processor passes no attention mask): pass lengths = the
    full length to reproduce it.

The image normalisation comes from the family's processor (preprocessor_config.json, not in
config.json): OpenAI CLIP's mean/std, SigLIP's 0.5 / 0.5; the ViT takes images in [0, 1] (or uint8).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmjax.pretrained.convert import Entry, Part, block, copy, linear, norm
from mmjax.pretrained.vit import activation, patch_embedding, reshaped

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

# The config classes' defaults, for config.json files that leave them out.
DEFAULTS = {
  "clip": {
    "text": dict(
      vocab_size=49408,
      hidden_size=512,
      intermediate_size=2048,
      num_hidden_layers=12,
      num_attention_heads=8,
      max_position_embeddings=77,
      hidden_act="quick_gelu",
      layer_norm_eps=1e-5,
    ),
    "vision": dict(
      hidden_size=768,
      intermediate_size=3072,
      num_hidden_layers=12,
      num_attention_heads=12,
      num_channels=3,
      patch_size=32,
      hidden_act="quick_gelu",
      layer_norm_eps=1e-5,
    ),
  },
  "siglip": {
    "text": dict(
      vocab_size=32000,
      hidden_size=768,
      intermediate_size=3072,
      num_hidden_layers=12,
      num_attention_heads=12,
      max_position_embeddings=64,
      hidden_act="gelu_pytorch_tanh",
      layer_norm_eps=1e-6,
    ),
    "vision": dict(
      hidden_size=768,
      intermediate_size=3072,
      num_hidden_layers=12,
      num_attention_heads=12,
      num_channels=3,
      patch_size=16,
      hidden_act="gelu_pytorch_tanh",
      layer_norm_eps=1e-6,
      vision_use_head=True,
    ),
  },
}


def in_proj(mm: str, hf: str, heads: int, head_dim: int) -> list[Entry]:
  """torch nn.MultiheadAttention's packed `{hf}.in_proj_weight` [3D, D] / `in_proj_bias` [3D]
  (q, k, v stacked along the output dim) as the query, key and value Dense layers of the
  layers.MultiHeadAttention `mm` (kernels [D, heads, head_dim], biases [heads, head_dim])."""
  names = [f"{mm}/{n}" for n in ("query", "key", "value")]

  def w_to_mm(t):
    return [w.T.reshape(w.shape[1], heads, head_dim) for w in np.split(np.asarray(t[0]), 3, axis=0)]

  def w_to_hf(p):
    return [np.concatenate([np.asarray(k).reshape(k.shape[0], -1).T for k in p], axis=0)]

  def b_to_mm(t):
    return [b.reshape(heads, head_dim) for b in np.split(np.asarray(t[0]), 3)]

  def b_to_hf(p):
    return [np.concatenate([np.asarray(b).reshape(-1) for b in p])]

  return [
    Entry(
      tuple(f"{n}/kernel" for n in names),
      (f"{hf}.in_proj_weight",),
      w_to_mm,
      w_to_hf,
      lambda s: [(s[0][1], heads, head_dim)] * 3,
    ),
    Entry(
      tuple(f"{n}/bias" for n in names), (f"{hf}.in_proj_bias",), b_to_mm, b_to_hf, lambda s: [(heads, head_dim)] * 3
    ),
  ]


def _layers(hf_prefix: str, depth: int, heads: int, head_dim: int) -> list[Entry]:
  """The encoder layers shared by both towers of CLIP and SigLIP, as pre-norm TransformerBlocks."""
  names = dict(norm_self="layer_norm1", norm_mlp="layer_norm2", wi="mlp.fc1", wo="mlp.fc2")
  names |= dict(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", out="self_attn.out_proj")
  return [
    e for i in range(depth) for e in block(f"block_{i}", f"{hf_prefix}.encoder.layers.{i}", names, heads, head_dim)
  ]


def _sub(cfg: dict, family: str, tower: str) -> dict:
  return {**DEFAULTS[family][tower], **(cfg.get(f"{tower}_config") or {})}


def _tower(c: dict, where: str) -> dict:
  d, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
  if d % heads:
    raise ValueError(f"{where}: hidden_size {d} is not divisible by num_attention_heads {heads}.")
  return dict(
    width=d,
    depth=int(c["num_hidden_layers"]),
    num_heads=heads,
    mlp_dim=int(c["intermediate_size"]),
    head_dim=d // heads,
    mlp_activation=activation(c, where),
    style=dict(norm="layernorm", norm_eps=float(c["layer_norm_eps"]), attention_bias=True, mlp_bias=True),
  )


def _prefixed(entries, prefix: str) -> list[Entry]:
  return [dataclasses.replace(e, mm=tuple(f"{prefix}/{m}" for m in e.mm)) for e in entries]


def parts(cfg: dict, names=()) -> dict[str, Part]:
  family = cfg.get("model_type")
  if family not in DEFAULTS:
    raise ValueError(f"mmjax.pretrained.clip reads model_type 'clip' or 'siglip'; got {family!r}.")
  siglip = family == "siglip"
  where = f"{family} checkpoint"
  vc, tc = _sub(cfg, family, "vision"), _sub(cfg, family, "text")

  # -- image tower
  vit = _tower(vc, f"{where} vision_config")
  p, channels = int(vc["patch_size"]), int(vc.get("num_channels", 3))
  vit.update(
    patch_size=p,
    posemb="learn",
    class_token=not siglip,
    patch_bias=siglip,
    pre_norm=not siglip,
    pixel_mean=SIGLIP_MEAN if siglip else CLIP_MEAN,
    pixel_std=SIGLIP_STD if siglip else CLIP_STD,
  )
  ve = patch_embedding("patch_embed", "vision_model.embeddings.patch_embedding", p, channels, bias=siglip)
  ve += [copy("posemb", "vision_model.embeddings.position_embedding.weight")]
  if not siglip:
    ve += [copy("cls", "vision_model.embeddings.class_embedding")]
    ve += norm("pre_norm", "vision_model.pre_layrnorm")
  ve += _layers("vision_model", vit["depth"], vit["num_heads"], vit["head_dim"])
  ve += norm("norm", "vision_model.post_layernorm")

  # -- text tower
  text = _tower(tc, f"{where} text_config")
  text.update(vocab_size=int(tc["vocab_size"]), max_len=int(tc["max_position_embeddings"]), causal=not siglip)
  te = [
    copy("embed/embedding", "text_model.embeddings.token_embedding.weight"),
    copy("posemb", "text_model.embeddings.position_embedding.weight"),
  ]
  te += _layers("text_model", text["depth"], text["num_heads"], text["head_dim"])
  te += norm("norm", "text_model.final_layer_norm")

  out = {
    "image_encoder": Part("vit", vit, tuple(ve), data=dict(image_size=int(vc.get("image_size", 224)))),
    "text_encoder": Part("text", text, tuple(te)),
  }

  # -- the whole contrastive model
  heads = _prefixed(ve, "image_encoder") + _prefixed(te, "text_encoder")
  if siglip:
    if not vc.get("vision_use_head", True):
      return out  # no MAP head: SiglipModel cannot pool the images, so there is no whole model to load
    d, h = vit["width"], vit["num_heads"]
    embed_dim = int(tc.get("projection_size") or text["width"])
    heads += [reshaped("image_map/probe", "vision_model.head.probe", (1,), ())]
    heads += in_proj("image_map/attention", "vision_model.head.attention", h, d // h)
    heads += linear("image_map/attention/out", "vision_model.head.attention.out_proj", in_shape=(h, d // h))
    heads += norm("image_map/norm", "vision_model.head.layernorm")
    heads += linear("image_map/mlp/wi", "vision_model.head.mlp.fc1")
    heads += linear("image_map/mlp/wo", "vision_model.head.mlp.fc2")
    heads += linear("text_proj", "text_model.head")
    heads += [copy("logit_scale", "logit_scale"), copy("logit_bias", "logit_bias")]
    pools = dict(image_pool="map", text_pool="last", image_proj="none", text_proj="linear_bias")
  else:
    embed_dim = int(cfg.get("projection_dim", 512))
    heads += linear("image_proj", "visual_projection", bias=False)
    heads += linear("text_proj", "text_projection", bias=False)
    heads += [reshaped("logit_scale", "logit_scale", (), (1,))]  # a 0-d tensor in CLIP checkpoints
    pools = dict(image_pool="cls", text_pool="eos", image_proj="linear", text_proj="linear")
  text_block = {k: v for k, v in text.items() if k != "vocab_size"}  # the model passes it itself
  # The text tower's special ids, so that mmjax frames captions as the tower was trained
  # (models.contrastive.frame_text: CLIP's [BOS .. EOS], SigLIP's padding to its full length).
  text_ids = {k: int(tc[f"{k}_token_id"]) if tc.get(f"{k}_token_id") is not None else -1 for k in ("bos", "eos", "pad")}
  if not siglip and text_ids["eos"] == 2:
    # Legacy OpenAI configs say eos 2 (bos 0); their texts' BOS and EOS are the two highest ids,
    # which is why transformers pools them at the argmax of the ids.
    text_ids["bos"], text_ids["eos"] = text["vocab_size"] - 2, text["vocab_size"] - 1
  config = dict(
    kind="contrastive",
    embed_dim=embed_dim,
    loss="siglip" if siglip else "clip",
    vit=vit,
    text=text_block,
    text_ids=text_ids,
    **pools,
  )
  out["contrastive"] = Part("contrastive", dict(config=config, vocab_size=text["vocab_size"]), tuple(heads))
  return out
