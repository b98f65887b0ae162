"""BERT checkpoints (model_type "bert"): BertModel and the Bert* task models (their "bert." tower).

Parts:
  "text_encoder"  TextEncoder with post-norm blocks (x = norm(x + f(x))), biases, exact GELU,
                  learned positions, the embedding norm and no final norm. Every token takes
                  token type 0 (mmjax has no segment ids); the whole token_type_embeddings table is
                  the `type_embed` parameter ([type_vocab_size, width], row 0 used), so export
                  writes every row back.
  "text_pooler"   the pooler, tanh(dense(first token)) (`Pooler` below), for the checkpoints that
                  have one: its own part, as no mmjax model has a place for it; loaded and exported
                  like any part, so a BertModel round-trips.
A task model's head (cls.*, classifier.*, qa_outputs.*) is not mapped: export names its tensors.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers
from mmjax.pretrained.convert import Part, block, copy, linear, norm

# HF hidden_act -> layers.MLP_ACTIVATIONS ("gelu" is the exact erf GELU in BERT).
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "silu": "silu"}
# Task models built without the pooler (add_pooling_layer=False).
NO_POOLER = ("BertForMaskedLM", "BertLMHeadModel", "BertForTokenClassification", "BertForQuestionAnswering")


class Pooler(nn.Module):
  """BERT's pooler: [B, L, D] tokens -> [B, D] = tanh(dense(tokens[:, 0])) (the [CLS] token)."""

  width: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    return jnp.tanh(
      layers.Dense(self.width, ("media_embed",), ("embed",), dtype=self.dtype, name="dense")(tokens[:, 0])
    )


def _check(cfg: dict) -> None:
  where = "bert config.json"
  if cfg.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"{where}: position_embedding_type {cfg['position_embedding_type']!r}; mmjax reads 'absolute'.")
  if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
    raise ValueError(f"{where}: a BERT decoder (is_decoder / add_cross_attention) is not a text encoder mmjax reads.")
  if cfg.get("hidden_act", "gelu") not in ACTIVATIONS:
    raise ValueError(f"{where}: hidden_act {cfg['hidden_act']!r} is not one mmjax has; use {sorted(ACTIVATIONS)}.")
  if cfg["hidden_size"] % cfg["num_attention_heads"]:
    raise ValueError(
      f"{where}: hidden_size={cfg['hidden_size']} is not a multiple of "
      f"num_attention_heads={cfg['num_attention_heads']}."
    )


def parts(cfg: dict, names=()) -> dict[str, Part]:
  _check(cfg)
  architectures = list(cfg.get("architectures") or ["BertModel"])
  # A task model holds BertModel under "bert." (save_pretrained of a BertModel has no prefix).
  p = "" if architectures == ["BertModel"] else "bert."
  width, heads, depth = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), int(cfg["num_hidden_layers"])
  head_dim = width // heads
  fields = dict(
    vocab_size=int(cfg["vocab_size"]),
    width=width,
    depth=depth,
    num_heads=heads,
    mlp_dim=int(cfg["intermediate_size"]),
    max_len=int(cfg["max_position_embeddings"]),
    head_dim=head_dim,
    mlp_activation=ACTIVATIONS[cfg.get("hidden_act", "gelu")],
    style=dict(
      norm="layernorm",
      norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
      post_norm=True,
      attention_bias=True,
      mlp_bias=True,
    ),
    causal=False,
    type_embedding=True,
    type_vocab_size=int(cfg.get("type_vocab_size", 2)),
    embed_norm=True,
    final_norm=False,
  )
  e = f"{p}embeddings"
  entries = [
    copy("embed/embedding", f"{e}.word_embeddings.weight"),
    copy("posemb", f"{e}.position_embeddings.weight"),
    copy("type_embed", f"{e}.token_type_embeddings.weight"),
    *norm("embed_norm", f"{e}.LayerNorm"),
  ]
  qkv = (heads, head_dim)
  # Post-norm: each sublayer's norm sits after its residual sum (style post_norm), named with its output.
  names = {r: f"attention.self.{r}" for r in ("query", "key", "value")} | dict(out="attention.output.dense")
  names |= dict(norm_self="attention.output.LayerNorm", wi="intermediate.dense", wo="output.dense")
  names |= dict(norm_mlp="output.LayerNorm")
  for i in range(depth):
    entries += block(f"block_{i}", f"{p}encoder.layer.{i}", names, *qkv)
  found = {"text_encoder": Part("text", fields, tuple(entries))}
  if not any(a in NO_POOLER for a in architectures):
    found["text_pooler"] = Part(
      "mmjax.pretrained.bert:Pooler", dict(width=width), tuple(linear("dense", f"{p}pooler.dense"))
    )
  return found
