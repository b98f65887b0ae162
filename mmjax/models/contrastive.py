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


class ContrastiveModel(nn.Module):
  """Two towers with mean pooling and linear projections to `embed_dim`, L2-normalised.

  config keys: vit, text (as in the VLM), embed_dim, loss ("clip" | "siglip"), dtype,
  attention_implementation, remat and scan_layers (as in the VLM; optional). Learnable
  `logit_scale` = log t (CLIP init log(1/0.07); SigLIP init log 10) and, for SigLIP, `logit_bias` (init -10).
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
    txt_tokens = TextEncoder(
      self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype, **knobs, name="text_encoder"
    )(tokens, lengths)
    img = img_tokens.mean(axis=1)
    valid = (jnp.arange(tokens.shape[1])[None] < lengths[:, None]).astype(txt_tokens.dtype)
    txt = (txt_tokens * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1, keepdims=True), 1.0)
    img = layers.Dense(c.embed_dim, ("embed",), ("media_embed",), use_bias=False, dtype=dtype, name="image_proj")(img)
    txt = layers.Dense(c.embed_dim, ("embed",), ("media_embed",), use_bias=False, dtype=dtype, name="text_proj")(txt)
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
