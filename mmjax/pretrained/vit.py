"""ViT checkpoints (model_type "vit": Hugging Face ViTModel / ViTForImageClassification) as mmjax parts.

  "image_encoder"  mmjax.encoders.ViT: class token, patch embedding with bias, learned positions
                   (class position first), pre-norm blocks with exact (erf) GELU, final layernorm
                   (ViTModel's `layernorm`: the ViT's output is the checkpoint's last_hidden_state).
  "pooler"         ViTModel's pooler (dense + tanh on the class token) as a pooling.TokenHead.
  "classifier"     ViTForImageClassification's linear classifier on the class token (TokenHead,
                   activation "none"); that checkpoint has no pooler and its tensors start "vit.".

Also the vision pieces shared with CLIP and SigLIP (mmjax.pretrained.clip): the patch-embedding
convolution as a Dense over einops "(p q c)" patches, tensors that differ only in leading unit
dims, and Hugging Face activation names.
"""

from __future__ import annotations

import numpy as np

from mmjax.pretrained.convert import Entry, Part, block, copy, linear, norm

# Hugging Face hidden_act -> layers.MLP_ACTIVATIONS: transformers' "gelu" is the erf form,
# "gelu_new" / "gelu_pytorch_tanh" the tanh approximation.
ACTIVATIONS = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "gelu_fast": "gelu",
  "quick_gelu": "quick_gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}

# The image normalisation of the families' processors (preprocessor_config.json, which config.json
# does not carry): ViTImageProcessor's default.
VIT_MEAN = VIT_STD = (0.5, 0.5, 0.5)


def activation(cfg: dict, where: str, key: str = "hidden_act") -> str:
  name = cfg.get(key, "gelu")
  if name not in ACTIVATIONS:
    raise ValueError(f"{where}: {key}={name!r} has no mmjax MLP activation; supported: {sorted(ACTIVATIONS)}.")
  return ACTIVATIONS[name]


def patch_embedding(mm: str, hf: str, patch: int, channels: int, bias: bool = True) -> list[Entry]:
  """A Conv2d patch embedding `hf` (weight [D, C, p, p], stride p) as the ViT's layers.Dense `mm`
  over einops "b (gh p) (gw q) c -> b (gh gw) (p q c)" patches: kernel [(p p C), D] with
  kernel[(i p + j) C + c, d] = weight[d, c, i, j]."""

  def to_mm(t):
    w = np.asarray(t[0])
    return [w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])]

  def to_hf(p):
    k = np.asarray(p[0])
    return [k.reshape(patch, patch, channels, k.shape[-1]).transpose(3, 2, 0, 1)]

  def mm_shapes(s):
    d, c, ph, pw = s[0]
    return [(ph * pw * c, d)]

  entries = [Entry((f"{mm}/kernel",), (f"{hf}.weight",), to_mm, to_hf, mm_shapes)]
  if bias:
    entries.append(copy(f"{mm}/bias", f"{hf}.bias"))
  return entries


def reshaped(mm: str, hf: str, hf_lead: tuple, mm_lead: tuple) -> Entry:
  """A tensor whose leading unit dims differ between the two sides (ViT's cls_token [1, 1, D] ->
  [D], CLIP's scalar logit_scale -> [1]); the trailing dims are the same."""
  n_hf, n_mm = len(hf_lead), len(mm_lead)
  return Entry(
    (mm,),
    (hf,),
    lambda t: [np.asarray(t[0]).reshape(tuple(mm_lead) + np.shape(t[0])[n_hf:])],
    lambda p: [np.asarray(p[0]).reshape(tuple(hf_lead) + np.shape(p[0])[n_mm:])],
    lambda s: [tuple(mm_lead) + tuple(s[0][n_hf:])],
  )


def _prefix(cfg: dict) -> tuple[str, bool]:
  """(tensor name prefix, whether the checkpoint is a classifier) from config.json's architectures."""
  arch = cfg.get("architectures") or ["ViTModel"]
  if "ViTForImageClassification" in arch:
    return "vit.", True
  if arch[0] != "ViTModel":
    raise ValueError(f"ViT checkpoint with architectures {arch}: mmjax reads ViTModel and ViTForImageClassification.")
  return "", False


def parts(cfg: dict, names=()) -> dict[str, Part]:
  where = "ViT checkpoint"
  pre, classifier = _prefix(cfg)
  d, heads, depth = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
  hd = d // heads
  p, channels = int(cfg["patch_size"]), int(cfg.get("num_channels", 3))
  qkv_bias = bool(cfg.get("qkv_bias", True))
  if not qkv_bias:
    # layers.MultiHeadAttention has one use_bias for q/k/v and out; ViT's output dense always has one.
    raise ValueError(f"{where}: qkv_bias=False is not supported (mmjax's attention biases q, k, v and out together).")
  eps = float(cfg.get("layer_norm_eps", 1e-12))
  fields = dict(
    width=d,
    depth=depth,
    num_heads=heads,
    mlp_dim=int(cfg["intermediate_size"]),
    patch_size=p,
    posemb="learn",
    head_dim=hd,
    mlp_activation=activation(cfg, where),
    style=dict(norm="layernorm", norm_eps=eps, attention_bias=True, mlp_bias=True),
    class_token=True,
    patch_bias=True,
    pre_norm=False,
    pixel_mean=VIT_MEAN,
    pixel_std=VIT_STD,
  )
  e = [
    *patch_embedding("patch_embed", f"{pre}embeddings.patch_embeddings.projection", p, channels),
    reshaped("cls", f"{pre}embeddings.cls_token", (1, 1), ()),
    reshaped("posemb", f"{pre}embeddings.position_embeddings", (1,), ()),
    *norm("norm", f"{pre}layernorm"),
  ]
  names = dict(norm_self="layernorm_before", norm_mlp="layernorm_after", wi="intermediate.dense", wo="output.dense")
  names |= {r: f"attention.attention.{r}" for r in ("query", "key", "value")} | dict(out="attention.output.dense")
  for i in range(depth):
    e += block(f"block_{i}", f"{pre}encoder.layer.{i}", names, heads, hd)
  out = {"image_encoder": Part("vit", fields, tuple(e), data=dict(image_size=int(cfg.get("image_size", 224))))}
  head = "mmjax.encoders.pooling:TokenHead"
  if classifier:
    labels = len(cfg.get("id2label") or {}) or int(cfg.get("num_labels", 2))
    out["classifier"] = Part(head, dict(features=labels, activation="none"), tuple(linear("dense", "classifier")))
  else:
    act = cfg.get("pooler_act", "tanh")
    if act != "tanh":
      raise ValueError(f"{where}: pooler_act={act!r}; mmjax's TokenHead has 'tanh'.")
    size = int(cfg.get("pooler_output_size") or d)
    out["pooler"] = Part(head, dict(features=size, activation="tanh"), tuple(linear("dense", f"{pre}pooler.dense")))
  return out
