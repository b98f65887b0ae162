"""Whisper checkpoints (model_type "whisper"): WhisperModel, WhisperForConditionalGeneration.

Parts:
  "audio_encoder"  the encoder, an AudioEncoder with frontend "whisper": it computes
                   WhisperFeatureExtractor's log-mel features from the waveform itself (so the VLM's
                   waveform batches feed it) and zero-pads each clip to Whisper's 30 s window
                   (pad_to_max_len), as the feature extractor does; frontend "whisper_features" runs
                   the same parameters on precomputed `input_features` [B, n_mels, frames].
  "decoder"        the decoder, a Decoder whose every layer cross-attends to the encoder's tokens:
                   it needs cross_attention_every=1 (in a VLM: fusion "cross_attention" with
                   cross_attention_every=1), which the model, not the part's fields, sets.

Whisper's attention has biases on q, v and out but none on k: the k projection loads a zero bias
(convert.constant), which softmax ignores, so it stays zero in training and export drops it.
`embed_positions` of the encoder (a fixed sin-cos table in the checkpoint) is loaded as the
AudioEncoder's learned position table (posemb "learn", initialised with the same codes), so export
writes it back bit for bit; config.model.freeze = ("audio_encoder/posemb",) keeps Whisper's fixed
table fixed. Whisper attends to the whole zero-padded window (it never masks audio padding), so
config.model.audio.mask_padding=False is the original model; True masks the padded tokens.
"""

from __future__ import annotations

from mmjax.pretrained.convert import Part, constant, conv, copy, linear, norm

# HF activation_function -> layers.MLP_ACTIVATIONS ("gelu" is the exact erf GELU in torch).
ACTIVATIONS = {
  "gelu": "gelu_exact",
  "gelu_new": "gelu",
  "gelu_pytorch_tanh": "gelu",
  "quick_gelu": "quick_gelu",
  "relu": "relu",
  "silu": "silu",
  "swish": "silu",
}
# WhisperFeatureExtractor's constants: the config holds only num_mel_bins.
SAMPLE_RATE, N_FFT, HOP = 16_000, 400, 160
STYLE = dict(norm="layernorm", norm_eps=1e-5, post_norm=False, attention_bias=True, mlp_bias=True)


def _activation(cfg: dict) -> str:
  act = cfg.get("activation_function", "gelu")
  if act not in ACTIVATIONS:
    raise ValueError(
      f"whisper config.json: activation_function {act!r} is not one mmjax has; use {sorted(ACTIVATIONS)}."
    )
  return ACTIVATIONS[act]


def _heads(cfg: dict, heads_key: str) -> tuple[int, int]:
  width, heads = int(cfg["d_model"]), int(cfg[heads_key])
  if width % heads:
    raise ValueError(f"whisper config.json: d_model={width} is not a multiple of {heads_key}={heads}.")
  return heads, width // heads


def attention(mm: str, hf: str, heads: int, head_dim: int) -> list:
  """WhisperAttention `hf` as a MultiHeadAttention `mm` with biases (the key's a zero constant)."""
  qkv = (heads, head_dim)
  return [
    *linear(f"{mm}/query", f"{hf}.q_proj", out_shape=qkv),
    *linear(f"{mm}/key", f"{hf}.k_proj", out_shape=qkv, bias=False),
    constant(f"{mm}/key/bias", qkv),
    *linear(f"{mm}/value", f"{hf}.v_proj", out_shape=qkv),
    *linear(f"{mm}/out", f"{hf}.out_proj", in_shape=qkv),
  ]


def _block(mm: str, hf: str, heads: int, head_dim: int, cross: bool) -> list:
  entries = [*norm(f"{mm}/norm_self", f"{hf}.self_attn_layer_norm")]
  entries += attention(f"{mm}/self_attention", f"{hf}.self_attn", heads, head_dim)
  if cross:
    entries += norm(f"{mm}/norm_cross", f"{hf}.encoder_attn_layer_norm")
    entries += attention(f"{mm}/cross_attention", f"{hf}.encoder_attn", heads, head_dim)
  entries += norm(f"{mm}/norm_mlp", f"{hf}.final_layer_norm")
  entries += linear(f"{mm}/mlp/wi", f"{hf}.fc1") + linear(f"{mm}/mlp/wo", f"{hf}.fc2")
  return entries


def encoder_part(cfg: dict, prefix: str = "") -> Part:
  heads, head_dim = _heads(cfg, "encoder_attention_heads")
  depth = int(cfg["encoder_layers"])
  fields = dict(
    width=int(cfg["d_model"]),
    depth=depth,
    num_heads=heads,
    mlp_dim=int(cfg["encoder_ffn_dim"]),
    frontend="whisper",
    sample_rate=SAMPLE_RATE,
    n_fft=N_FFT,
    hop=HOP,
    n_mels=int(cfg.get("num_mel_bins", 80)),
    posemb="learn",
    max_len=int(cfg["max_source_positions"]),
    pad_to_max_len=True,
    head_dim=head_dim,
    mlp_activation=_activation(cfg),
    style=dict(STYLE),
  )
  p = f"{prefix}encoder"
  entries = [*conv("conv_0/kernel", f"{p}.conv1"), *conv("conv_1/kernel", f"{p}.conv2")]
  entries.append(copy("posemb", f"{p}.embed_positions.weight"))
  for i in range(depth):
    entries += _block(f"block_{i}", f"{p}.layers.{i}", heads, head_dim, cross=False)
  entries += norm("norm", f"{p}.layer_norm")
  return Part("audio", fields, tuple(entries))


def decoder_part(cfg: dict, prefix: str = "", lm_head: bool = False) -> Part:
  """lm_head: the checkpoint has its own output projection `proj_out` (untied embeddings)."""
  heads, head_dim = _heads(cfg, "decoder_attention_heads")
  depth = int(cfg["decoder_layers"])
  fields = dict(
    vocab_size=int(cfg["vocab_size"]),
    width=int(cfg["d_model"]),
    depth=depth,
    num_heads=heads,
    mlp_dim=int(cfg["decoder_ffn_dim"]),
    max_len=int(cfg["max_target_positions"]),
    mlp_activation=_activation(cfg),
    head_dim=head_dim,
    posemb="learn",
    scale_embeddings=False,  # WhisperDecoder never applies its embed_scale
    tie_embeddings=not lm_head,
    style=dict(STYLE),
  )
  p = f"{prefix}decoder"
  entries = [copy("embed/embedding", f"{p}.embed_tokens.weight"), copy("posemb", f"{p}.embed_positions.weight")]
  for i in range(depth):
    entries += _block(f"blocks_{i}", f"{p}.layers.{i}", heads, head_dim, cross=True)
  entries += norm("norm", f"{p}.layer_norm")
  if lm_head:
    entries += linear("lm_head", "proj_out", bias=False)
  return Part("decoder", fields, tuple(entries))


def parts(cfg: dict, names=()) -> dict[str, Part]:
  architectures = list(cfg.get("architectures") or ["WhisperModel"])
  generation = any(a.endswith("ForConditionalGeneration") for a in architectures)
  # WhisperForConditionalGeneration nests the WhisperModel under "model."; its proj_out is saved
  # only when it is not tied to the token embedding.
  prefix = "model." if generation else ""
  found = {"audio_encoder": encoder_part(cfg, prefix)}
  if not any("AudioClassification" in a for a in architectures):  # an encoder-only checkpoint
    untied = generation and not cfg.get("tie_word_embeddings", True)
    found["decoder"] = decoder_part(cfg, prefix, lm_head=untied)
  return found
