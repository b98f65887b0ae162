"""GPT-2 checkpoints (model_type "gpt2": Hugging Face GPT2LMHeadModel) as an mmjax "decoder" part.

  "decoder"  mmjax.decoders.lm.Decoder: learned positions (posemb "learn", max_len = n_positions),
             pre-norm blocks with LayerNorm (eps layer_norm_epsilon) and biases on every projection,
             tanh GELU MLP (activation_function "gelu_new"), final LayerNorm `ln_f`, output
             projection tied to the token embedding (an untied checkpoint's `lm_head.weight` maps
             to the Decoder's `lm_head`).

GPT-2 stores its projections as `Conv1D`: weight [in, out] (Dense's order, no transpose), and the
attention's query, key and value side by side in one `c_attn` [D, 3D] (convert.split).

`fields` holds Decoder constructor fields, vocab_size included so that `Decoder(**fields)` builds
the model standalone (a composed model passes vocab_size itself, mmjax.pretrained.compose).

Tensor names: GPT2LMHeadModel.save_pretrained writes "transformer.h.0...", but the original
checkpoints on the Hub (gpt2, gpt2-medium, ...; saved from GPT2Model) have no "transformer." prefix
and also hold each layer's causal-mask buffer `h.N.attn.bias` (not a parameter: never read).
config.json cannot tell the two apart, so `parts(cfg, names)` takes the checkpoint's tensor names
when the caller has them; without them it assumes save_pretrained's layout.
"""

from __future__ import annotations

from mmjax.pretrained.convert import Part, copy, linear, norm, split
from mmjax.pretrained.vit import ACTIVATIONS

PREFIX = "transformer."


def prefix(names) -> str:
  """The tensor-name prefix of a checkpoint holding `names` (PREFIX when unknown)."""
  if names is not None and "wte.weight" in names and f"{PREFIX}wte.weight" not in names:
    return ""
  return PREFIX


def parts(cfg: dict, names=None) -> dict[str, Part]:
  where = "GPT-2 checkpoint"
  d, heads, depth = int(cfg["n_embd"]), int(cfg["n_head"]), int(cfg["n_layer"])
  if d % heads:
    raise ValueError(f"{where}: n_embd={d} is not divisible by n_head={heads}.")
  hd = d // heads
  # Attention variants layers.MultiHeadAttention does not have (its scale is always 1/sqrt(head_dim)).
  if not cfg.get("scale_attn_weights", True):
    raise ValueError(f"{where}: scale_attn_weights=False is not supported (mmjax scales by 1/sqrt(head_dim)).")
  if cfg.get("scale_attn_by_inverse_layer_idx", False):
    raise ValueError(f"{where}: scale_attn_by_inverse_layer_idx=True is not supported.")
  if cfg.get("add_cross_attention", False):
    raise ValueError(f"{where}: add_cross_attention=True (GPT-2 as a seq2seq decoder) is not supported.")
  act = cfg.get("activation_function", "gelu_new")
  if act not in ACTIVATIONS:
    raise ValueError(
      f"{where}: activation_function={act!r} has no mmjax MLP activation; use one of {sorted(ACTIVATIONS)}."
    )
  tied = bool(cfg.get("tie_word_embeddings", True))
  mlp_dim = int(cfg.get("n_inner") or 4 * d)
  fields = dict(
    vocab_size=int(cfg["vocab_size"]),
    width=d,
    depth=depth,
    num_heads=heads,
    num_kv_heads=heads,
    head_dim=hd,
    mlp_dim=mlp_dim,
    max_len=int(cfg.get("n_positions") or cfg.get("n_ctx") or 1024),
    mlp_activation=ACTIVATIONS[act],
    posemb="learn",
    scale_embeddings=False,
    tie_embeddings=tied,
    style=dict(
      norm="layernorm",
      norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
      post_norm=False,
      attention_bias=True,
      mlp_bias=True,
      rope_theta=0.0,
    ),
  )
  pre = prefix(names)
  e = [
    copy("embed/embedding", f"{pre}wte.weight"),
    copy("posemb", f"{pre}wpe.weight"),
    *norm("norm", f"{pre}ln_f"),
  ]
  qkv = [f"self_attention/{n}" for n in ("query", "key", "value")]
  for i in range(depth):
    mm, hf = f"blocks_{i}", f"{pre}h.{i}"
    e += norm(f"{mm}/norm_self", f"{hf}.ln_1")
    e.append(split([f"{mm}/{p}/kernel" for p in qkv], f"{hf}.attn.c_attn.weight", (d, d), [(d, heads, hd)] * 3))
    e.append(split([f"{mm}/{p}/bias" for p in qkv], f"{hf}.attn.c_attn.bias", (d,), [(heads, hd)] * 3))
    e += linear(f"{mm}/self_attention/out", f"{hf}.attn.c_proj", in_shape=(heads, hd), stored="in_out")
    e += norm(f"{mm}/norm_mlp", f"{hf}.ln_2")
    e += linear(f"{mm}/mlp/wi", f"{hf}.mlp.c_fc", stored="in_out")
    e += linear(f"{mm}/mlp/wo", f"{hf}.mlp.c_proj", stored="in_out")
  if not tied:
    e += linear("lm_head", "lm_head", bias=False)
  return {"decoder": Part("decoder", fields, tuple(e))}
