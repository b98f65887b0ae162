"""Contrastive joint embedding (CLIP / SigLIP): image tower + text tower + projections.

  model = ContrastiveModel(config, vocab_size)        # config: vit, text, embed_dim, loss, dtype, ...
  img, txt, logit_scale, logit_bias = model.apply(params, images, tokens, lengths)
  loss = contrastive_loss(img, txt, logit_scale, logit_bias, kind="clip" | "siglip")

Losses are written on global [B, D] arrays (all-pairs [B, B] logits) so that under `jax.jit` with
the batch sharded over ("data", "fsdp") the result is the unsharded loss: XLA gathers the other
tower's embeddings as needed (the explicit all-gather that pmap implementations do by hand). The
logits are pinned to rows-on-batch, columns-replicated, so each device holds [B/n, B].

Trained through the one trainer with config.model.kind = "contrastive" (the hooks of
mmjax.models.kind): the text of an image is its caption, read from a pipeline batch by
`caption_tokens`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax import layers
from mmjax.encoders import TextEncoder, ViT
from mmjax.encoders.pooling import MAPHead, pool_tokens
from mmjax.sharding import constrain


def caption_tokens(target_out, target_mask):
  """The text tower's input from a pipeline batch of captioning examples: the caption's tokens
  (no BOS / EOS; numpy or jax arrays) -> (tokens [B, Lt], lengths [B]). target_out holds
  [t1..tn, eos, pad..] and target_mask is 1 on t1..tn and eos, so the caption is n = sum - 1
  tokens (0 for padding rows)."""
  return target_out, (target_mask.sum(-1) - 1).clip(0).astype("int32")


def _normalize(x):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def pairwise_logits(img, txt, logit_scale, logit_bias=None):
  """[B, D] x [B, D] (L2-normalised) -> [B, B] = exp(logit_scale) * img @ txt.T (+ logit_bias)."""
  logits = jnp.einsum("id,jd->ij", img.astype(jnp.float32), txt.astype(jnp.float32)) * jnp.exp(logit_scale)
  if logit_bias is not None:
    logits = logits + logit_bias
  return constrain(logits, ("act_batch", None))


def clip_loss(img, txt, logit_scale):
  """Symmetric softmax cross-entropy (CLIP): mean of image->text and text->image losses."""
  logits = pairwise_logits(img, txt, logit_scale)
  diag = jnp.diagonal(logits)
  i2t = jax.nn.logsumexp(logits, axis=1) - diag
  t2i = jax.nn.logsumexp(logits, axis=0) - diag
  return 0.5 * (i2t.mean() + t2i.mean())


def siglip_loss(img, txt, logit_scale, logit_bias):
  """Pairwise sigmoid loss (SigLIP): -sum_ij log sigmoid(z_ij * (t x_i.y_j + b)) / B, z = +1 on the
  diagonal and -1 elsewhere."""
  logits = pairwise_logits(img, txt, logit_scale, logit_bias)
  n = logits.shape[0]
  z = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n


def contrastive_loss(img, txt, logit_scale, logit_bias=None, kind: str = "clip"):
  if kind == "clip":
    return clip_loss(img, txt, logit_scale)
  if kind == "siglip":
    if logit_bias is None:
      raise ValueError("siglip loss needs a logit_bias.")
    return siglip_loss(img, txt, logit_scale, logit_bias)
  raise ValueError(f"unknown contrastive loss {kind!r}; use 'clip' or 'siglip'.")


IMAGE_POOLS = ("mean", "cls", "map")
TEXT_POOLS = ("mean", "cls", "eos", "last")
PROJECTIONS = ("linear", "linear_bias", "none")


def head_options(config) -> dict:
  """The pooling and projection keys of a contrastive config (absent: mean pooling and bias-free
  linear projections, the model's original heads), checked by value."""
  opts = {
    "image_pool": config.get("image_pool", None) or "mean",
    "text_pool": config.get("text_pool", None) or "mean",
    "image_proj": config.get("image_proj", None) or "linear",
    "text_proj": config.get("text_proj", None) or "linear",
  }
  for key, allowed in (
    ("image_pool", IMAGE_POOLS),
    ("text_pool", TEXT_POOLS),
    ("image_proj", PROJECTIONS),
    ("text_proj", PROJECTIONS),
  ):
    if opts[key] not in allowed:
      raise ValueError(f"config.model.{key}={opts[key]!r}: use one of {allowed}.")
  if opts["image_pool"] == "cls" and not config.vit.get("class_token", False):
    raise ValueError("config.model.image_pool='cls' needs a class token: set config.model.vit.class_token=True.")
  for key, tower in (("image_proj", "vit"), ("text_proj", "text")):
    width = int(config[tower].get("width", 128))
    if opts[key] == "none" and width != int(config.embed_dim):
      raise ValueError(
        f"config.model.{key}='none' leaves the {tower} tower's width {width} as the embedding, but "
        f"config.model.embed_dim={config.embed_dim}: make them equal or project ('linear')."
      )
  return opts


def frame_text(tokens, lengths, text_pool: str, ids, max_len: int):
  """A caption (tokens without specials, as the pipeline gives it) in the layout a pretrained text
  tower was trained on, from the checkpoint's special ids `ids` ({bos, eos, pad}; -1 = none):
  "eos" pooling (CLIP) reads [BOS, t1..tn, EOS] and pools at its EOS (lengths n + 2); "last"
  pooling (SigLIP) reads the caption padded with its pad id to the full max_len and attends to
  every position (its tower never saw a padding mask). mmjax's own towers (no ids) read the
  caption as it is."""
  bos, eos, pad = (int((ids or {}).get(k, -1)) for k in ("bos", "eos", "pad"))
  b, n = tokens.shape
  rows = jnp.arange(b)
  if text_pool == "eos" and eos >= 0:
    if bos >= 0:
      tokens, lengths = jnp.concatenate([jnp.full((b, 1), bos, tokens.dtype), tokens], axis=1), lengths + 1
    tokens = jnp.concatenate([tokens, jnp.zeros((b, 1), tokens.dtype)], axis=1).at[rows, lengths].set(eos)
    return tokens[:, :max_len], jnp.minimum(lengths + 1, max_len)
  if text_pool == "last" and pad >= 0:
    full = jnp.full((b, max_len), pad, tokens.dtype)
    keep = jnp.arange(min(n, max_len))[None] < lengths[:, None]
    full = full.at[:, : min(n, max_len)].set(jnp.where(keep, tokens[:, :max_len], pad))
    return full, jnp.full_like(lengths, max_len)
  return tokens, lengths


class ContrastiveModel(nn.Module):
  """Two towers, each pooled to one vector and projected to `embed_dim`, L2-normalised.

  config keys: vit, text (as in the VLM), embed_dim, loss ("clip" | "siglip"), dtype,
  attention_implementation, remat and scan_layers (as in the VLM; optional). Learnable
  `logit_scale` = log t (CLIP init log(1/0.07); SigLIP init log 10) and, for SigLIP, `logit_bias` (init -10).

  Optional heads (mmjax.encoders.pooling; the defaults are mmjax's own towers):
    image_pool  "mean" (default) | "cls" (class token: CLIP) | "map" (attention pooling, parameters
                `image_map`, sized by the vit block: SigLIP)
    text_pool   "mean" (default, over the valid tokens) | "cls" | "eos" (token lengths - 1: CLIP, whose
                texts end with their EOS) | "last" (the final position whatever the lengths: SigLIP)
    image_proj, text_proj  "linear" (default, no bias) | "linear_bias" (SigLIP's text head) | "none"
                (the pooled vector is the embedding: SigLIP's image tower; needs width == embed_dim)
    text_ids    {bos, eos, pad}: a pretrained text tower's special ids, to frame captions as it was
                trained (`frame_text`); absent for mmjax's own towers
  """

  config: ml_collections.ConfigDict
  vocab_size: int

  # Model-kind hooks (mmjax.models.kind).
  evaluator = "contrastive"  # retrieval recall@k (and a dataset's zero-shot metric)
  train_tasks = ("caption",)  # (image, caption) pairs
  progress_metric = "batch_i2t_accuracy"
  # The loss couples every pair of the global batch: microbatches would change the objective.
  accumulates_gradients = False

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """Start-up errors of a contrastive config, naming the keys to change."""
    if not config.data.captions:
      raise ValueError(
        "config.model.kind='contrastive' trains on (image, caption) pairs, but "
        "config.data.captions=False: set config.data.captions=True."
      )
    text_len, caption_len = int(config.model.text.max_len), int(config.data.max_target_len)
    if text_len < caption_len:
      raise ValueError(
        f"config.model.text.max_len={text_len} < config.data.max_target_len={caption_len}: the "
        "contrastive text tower reads whole captions (up to max_target_len - 1 tokens); set "
        "config.model.text.max_len to at least max_target_len."
      )
    head_options(config.model)
    extra = [m for m in ("audio", "video") if config.model[m]]
    if extra:
      raise ValueError(
        f"config.model.kind='contrastive' has an image and a text tower only; remove config.model.{extra[0]}."
      )

  @staticmethod
  def batch_keys(model_config) -> tuple[str, ...]:
    return ("image", "target_out", "target_mask")

  @staticmethod
  def init_inputs(model_config, batch) -> tuple[tuple, dict]:
    return (batch["image"], *caption_tokens(batch["target_out"], batch["target_mask"])), {}

  def loss_sums(self, batch) -> tuple:
    """The CLIP / SigLIP loss of the whole global batch (every other caption is a negative), with
    in-batch top-1 retrieval accuracies and the learned temperature; weight 1 (a mean already)."""
    img, txt, scale, bias = self(batch["image"], *caption_tokens(batch["target_out"], batch["target_mask"]))
    loss = contrastive_loss(img, txt, scale, bias, self.config.loss)
    logits = pairwise_logits(img, txt, scale, bias)
    target = jnp.arange(logits.shape[0])
    sums = {
      "batch_i2t_accuracy": (logits.argmax(1) == target).mean(),
      "batch_t2i_accuracy": (logits.argmax(0) == target).mean(),
      "temperature": jnp.exp(scale),
      "weight": jnp.ones(()),
    }
    if bias is not None:
      sums["logit_bias"] = bias
    return loss, sums

  @nn.compact
  def __call__(self, images, tokens, lengths):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    impl = c.attention_implementation
    kind = c.loss
    knobs = dict(remat=str(c.remat), scan_layers=bool(c.scan_layers))
    img_tokens = ViT(**c.vit.to_dict(), implementation=impl, dtype=dtype, **knobs, name="image_encoder")(images)
    heads = head_options(c)
    text = TextEncoder(
      self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype, **knobs, name="text_encoder"
    )
    tokens, lengths = frame_text(tokens, lengths, heads["text_pool"], c.get("text_ids"), text.max_len)
    txt_tokens = text(tokens, lengths)
    if heads["image_pool"] == "map":
      vit = c.vit.to_dict()
      img = MAPHead(
        vit.get("num_heads", 4),
        vit.get("mlp_dim", 512),
        vit.get("mlp_activation", "gelu"),
        (vit.get("style") or {}).get("norm_eps", 1e-6),
        implementation=impl,
        dtype=dtype,
        name="image_map",
      )(img_tokens)
    else:
      img = pool_tokens(img_tokens, heads["image_pool"], where="config.model.image_pool")
    txt = pool_tokens(txt_tokens, heads["text_pool"], lengths, where="config.model.text_pool")

    def project(x, how, name):
      if how == "none":
        return x
      return layers.Dense(
        c.embed_dim, ("embed",), ("media_embed",), use_bias=how == "linear_bias", dtype=dtype, name=name
      )(x)

    img = project(img, heads["image_proj"], "image_proj")
    txt = project(txt, heads["text_proj"], "text_proj")
    img = constrain(_normalize(img), ("act_batch", None))
    txt = constrain(_normalize(txt), ("act_batch", None))
    init_t = math.log(10.0) if kind == "siglip" else math.log(1 / 0.07)
    scale = self.param(
      "logit_scale", layers.param_with_axes(nn.initializers.constant(init_t), ("norm",)), (1,), jnp.float32
    )[0]
    bias = None
    if kind == "siglip":
      bias = self.param(
        "logit_bias", layers.param_with_axes(nn.initializers.constant(-10.0), ("norm",)), (1,), jnp.float32
      )[0]
    return img, txt, scale, bias
