"""Llama and Gemma checkpoints (model_type "llama": LlamaForCausalLM; "gemma": GemmaForCausalLM, the
Gemma 1 architecture) as an mmjax "decoder" part.

  "decoder"  mmjax.decoders.lm.Decoder with rotary positions (posemb "none", style rope_theta), no
             learned position table, pre-norm blocks with RMSNorm, a gated MLP (gate_proj -> wi,
             up_proj -> wi_linear, down_proj -> wo) and grouped-query attention (num_kv_heads).
    Llama:   RMSNorm x / rms * w ("rmsnorm", eps rms_norm_eps), SwiGLU, biases as attention_bias /
             mlp_bias say (none in released models), output projection `lm_head` unless
             tie_word_embeddings (transformers' Llama default is untied).
    Gemma:   RMSNorm x / rms * (1 + w) ("rmsnorm_offset"), token embeddings scaled by sqrt(hidden)
             (scale_embeddings), GeGLU with tanh GELU, head_dim decoupled from hidden / heads (256 in
             the released models), tied output projection.

Both scale attention logits by 1/sqrt(head_dim) as mmjax does (Gemma 2's query_pre_attn_scalar is a
different model_type). Only the default RoPE is read: a checkpoint with rope scaling (Llama 3.1's
"llama3", linear, dynamic, yarn) is an error rather than a model that is silently wrong past its
original context.

`fields` holds Decoder constructor fields, vocab_size included so that `Decoder(**fields)` builds
the model standalone (a composed model passes vocab_size itself, mmjax.pretrained.compose).
"""

from __future__ import annotations

from mmjax.pretrained.convert import Part, block, copy, linear, norm

# hidden_act -> layers.MLP_ACTIVATIONS (gated). transformers reads Gemma's legacy "gelu" as the
# tanh approximation (GemmaConfig rewrites it to gelu_pytorch_tanh), so it is geglu for Gemma only.
GATED = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu", "gelu_new": "geglu", "gelu_fast": "geglu"}


def rope_theta(cfg: dict, where: str) -> float:
  """The RoPE base: transformers >= 5 writes rope_parameters {rope_theta, rope_type}, earlier
  versions rope_theta and rope_scaling at the top level."""
  params = cfg.get("rope_parameters") or {}
  scaling = cfg.get("rope_scaling") or {}
  kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
  if kind != "default":
    raise ValueError(f"{where}: rope type {kind!r} is not supported (mmjax's RoPE is the default, unscaled one).")
  if float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))) != 1.0:
    raise ValueError(f"{where}: partial_rotary_factor != 1 is not supported.")
  return float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def parts(cfg: dict, names=()) -> dict[str, Part]:
  gemma = cfg.get("model_type") == "gemma"
  where = "Gemma checkpoint" if gemma else "Llama checkpoint"
  d, heads, depth = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
  kv_heads = int(cfg.get("num_key_value_heads") or heads)
  if heads % kv_heads:
    raise ValueError(f"{where}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}.")
  hd = int(cfg.get("head_dim") or d // heads)
  if gemma:
    # transformers 4.x Gemma configs name the MLP's activation hidden_activation (hidden_act legacy).
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    act = "gelu_pytorch_tanh" if act == "gelu" else act
    if cfg.get("use_bidirectional_attention"):
      raise ValueError(f"{where}: use_bidirectional_attention=True is not a causal LM; not supported.")
  else:
    act = cfg.get("hidden_act", "silu")
  if act not in GATED:
    raise ValueError(f"{where}: hidden_act={act!r} has no gated mmjax MLP activation; supported: {sorted(GATED)}.")
  attention_bias = bool(cfg.get("attention_bias", False))
  mlp_bias = False if gemma else bool(cfg.get("mlp_bias", False))
  tied = bool(cfg.get("tie_word_embeddings", gemma))
  fields = dict(
    vocab_size=int(cfg["vocab_size"]),
    width=d,
    depth=depth,
    num_heads=heads,
    num_kv_heads=kv_heads,
    head_dim=hd,
    mlp_dim=int(cfg["intermediate_size"]),
    max_len=int(cfg.get("max_position_embeddings") or 2048),
    mlp_activation=GATED[act],
    posemb="none",
    scale_embeddings=gemma,
    tie_embeddings=tied,
    style=dict(
      norm="rmsnorm_offset" if gemma else "rmsnorm",
      norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
      post_norm=False,
      attention_bias=attention_bias,
      mlp_bias=mlp_bias,
      rope_theta=rope_theta(cfg, where),
    ),
  )
  kind = fields["style"]["norm"]
  e = [copy("embed/embedding", "model.embed_tokens.weight"), *norm("norm", "model.norm", kind)]
  names = dict(norm_self="input_layernorm", norm_mlp="post_attention_layernorm")
  names |= dict(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj", out="self_attn.o_proj")
  names |= dict(wi="mlp.gate_proj", wi_linear="mlp.up_proj", wo="mlp.down_proj")
  for i in range(depth):
    e += block(f"blocks_{i}", f"model.layers.{i}", names, heads, hd, kv_heads, kind, attention_bias, mlp_bias)
  if not tied:
    e += linear("lm_head", "lm_head", bias=False)
  return {"decoder": Part("decoder", fields, tuple(e))}
