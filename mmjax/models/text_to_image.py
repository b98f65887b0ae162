"""Text-to-image by flow matching: a text encoder over the caption conditions a DiT velocity network.

  model = TextToImageFlow(config.model, vocab_size)    # config.model: text, dit, t_sampling, ...
  v = model.apply(params, x_t, t, tokens, lengths)     # velocity [B, H, W, 3] in model space

Sampling (noise -> image with mmjax.sample.flow, with or without classifier-free guidance) is
mmjax.sample.text_to_image: the sampler sits on a higher floor than the models.

Model space: uint8 pixels scaled to [-1, 1] (x0 = image / 127.5 - 1). Training (`loss_sums`) draws per
example a time t (config.model.t_sampling: "logit_normal" with t_mean / t_std, or "uniform") and noise
eps ~ N(0, I), and regresses the DiT's velocity at x_t = (1 - t) x0 + t eps on eps - x0
(mmjax.models.flow_matching). With probability config.model.cond_dropout a caption is replaced by the
null condition (text length 0), which classifier-free guidance needs at sampling time.

Trained through the one trainer with config.model.kind = "t2i_flow" on the captioning examples (the
hooks of mmjax.models.kind): the caption of an image is its prompt (mmjax.models.contrastive.caption_tokens),
and evaluation generates an image per caption (mmjax.evaluate.text_to_image).

EMA weights: config.ema_decay (the train state keeps the average; evaluation and sampling use it).

Latent flow matching (config.model.autoencoder, the fields of mmjax.encoders.autoencoder.ImageAutoencoder;
absent or None: pixels): the DiT runs on the latents of an autoencoder trained in the same run. The
flow's data are the autoencoder's current latents, read as fixed targets (no gradient flows from the
flow into the autoencoder); the autoencoder learns from its reconstruction loss alone (weighted by
config.model.autoencoder_weight), as the VQ tokenizer of mmjax.models.image_tokens does. Its latents
have a fixed scale (unit root-mean-square per coordinate), the noise's, however far it has trained.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mmjax.decoders.dit import DiT
from mmjax.encoders import TextEncoder
from mmjax.encoders.autoencoder import ImageAutoencoder
from mmjax.models import flow_matching
from mmjax.models.contrastive import caption_tokens


def to_model_space(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_pixels(x: jax.Array) -> jax.Array:
  """Model space -> uint8 [0, 255] (rounded; values outside [-1, 1] are clipped)."""
  return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def check_caption_config(config: ml_collections.ConfigDict) -> None:
  """The start-up errors every text-to-image kind shares: it trains on (image, caption) pairs, reads no
  other media, and drops captions (config.model.cond_dropout) with a probability in [0, 1)."""
  m, kind = config.model, config.model.kind
  if not config.data.captions:
    raise ValueError(
      f"config.model.kind={kind!r} trains on (image, caption) pairs, but config.data.captions=False: "
      "set config.data.captions=True."
    )
  if not 0.0 <= float(m.cond_dropout) < 1.0:
    raise ValueError(f"config.model.cond_dropout={m.cond_dropout} must be in [0, 1).")
  extra = [k for k in ("audio", "video") if m[k]]
  if extra:
    raise ValueError(f"config.model.kind={kind!r} reads images and captions only; remove config.model.{extra[0]}.")


class TextToImageFlow(nn.Module):
  """Caption tokens -> TextEncoder (config.model.text) -> DiT (config.model.dit) velocity.

  config keys: text (TextEncoder fields), dit (DiT fields), t_sampling ("logit_normal" | "uniform"),
  t_mean / t_std (the logit-normal's location and scale), cond_dropout (the probability of training
  a row on the null condition), autoencoder (ImageAutoencoder fields: latent flow; None: pixels) and
  autoencoder_weight, dtype, attention_implementation, remat and scan_layers (the text encoder's; as
  in the other kinds).
  """

  config: ml_collections.ConfigDict
  vocab_size: int

  # Model-kind hooks (mmjax.models.kind).
  evaluator = "t2i"  # generated images scored by the dataset's image_scorer
  image_sampler = "flow"  # mmjax.sample.text_to_image: the velocity ODE from noise
  train_tasks = ("caption",)  # (image, caption) pairs: the caption is the prompt
  progress_metric = "x0_mse"
  # The loss is a sum over examples with weight = their count: microbatches add up exactly.
  accumulates_gradients = True

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    """Start-up errors of a text-to-image config, naming the keys to change."""
    m = config.model
    check_caption_config(config)
    text_len, caption_len = int(m.text.max_len), int(config.data.max_target_len)
    if text_len < caption_len:
      raise ValueError(
        f"config.model.text.max_len={text_len} < config.data.max_target_len={caption_len}: the text "
        "encoder reads whole captions; set config.model.text.max_len to at least max_target_len."
      )
    patch, size = int(m.dit.get("patch_size", DiT.patch_size)), int(config.data.image_size)
    ae = m.get("autoencoder")
    if ae:
      ae_patch = int(ae.get("patch_size", ImageAutoencoder.patch_size))
      if size % (ae_patch * patch):
        raise ValueError(
          f"config.data.image_size={size} is not a multiple of config.model.autoencoder.patch_size x "
          f"config.model.dit.patch_size = {ae_patch} x {patch}: the DiT's patches tile the latent grid."
        )
    elif size % patch:
      raise ValueError(f"config.data.image_size={size} is not a multiple of config.model.dit.patch_size={patch}.")
    if m.t_sampling not in flow_matching.T_KINDS:
      raise ValueError(f"config.model.t_sampling={m.t_sampling!r}: use one of {flow_matching.T_KINDS}.")

  @staticmethod
  def max_prompt_len(model_config) -> int:
    """The most caption tokens a prompt may have: what the text encoder reads."""
    return int(model_config.text.max_len)

  @staticmethod
  def batch_keys(model_config) -> tuple[str, ...]:
    return ("image", "target_out", "target_mask")

  @staticmethod
  def init_inputs(model_config, batch) -> tuple[tuple, dict]:
    x = to_model_space(batch["image"])
    t = jnp.zeros((x.shape[0],), jnp.float32)
    return (x, t, *caption_tokens(batch["target_out"], batch["target_mask"])), {}

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    impl = c.attention_implementation
    knobs = dict(remat=str(c.remat), scan_layers=bool(c.scan_layers))
    self.text_encoder = TextEncoder(self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype, **knobs)
    self.dit = DiT(**c.dit.to_dict(), implementation=impl, dtype=dtype)
    ae = c.get("autoencoder")
    self.autoencoder = ImageAutoencoder(**ae.to_dict(), dtype=dtype) if ae else None

  def sample_shape(self, image_size: int) -> tuple[int, int, int]:
    """(H, W, C) of what the flow generates for square images of side image_size: the image itself,
    or its latent grid."""
    ae = self.config.get("autoencoder")
    if not ae:
      return (image_size, image_size, 3)
    return ImageAutoencoder(**ae.to_dict(), parent=None).latent_shape(image_size)

  def to_image(self, x):
    """What the flow generated -> model-space images [B, S, S, 3] (the autoencoder's decoder, if any)."""
    return x if self.autoencoder is None else self.autoencoder.decode(x)

  def _flow_data(self, images):
    """Model-space images -> (the flow's data x0, per-example autoencoder reconstruction MSE or None)."""
    if self.autoencoder is None:
      return images, None
    _, z, losses = self.autoencoder(images)
    return jax.lax.stop_gradient(z), losses["recon_mse"]

  def encode_text(self, tokens, lengths):
    """Caption tokens [B, L] (no BOS / EOS) -> features [B, L, D]. An empty row (padding) reads one
    token, so that no attention row is fully masked; the DiT masks by the true lengths anyway."""
    return self.text_encoder(tokens, jnp.maximum(lengths, 1))

  def velocity(self, x, t, text, text_len):
    """The DiT's velocity at x [B, H, W, C], t [B] given encoded text; text_len 0 = the null condition."""
    return self.dit(x, t, text, text_len)

  def __call__(self, x, t, tokens, lengths):
    """The velocity at the noised data of images x (model space) at t; init runs it to create every part."""
    x0, _ = self._flow_data(x)
    return self.velocity(x0, t, self.encode_text(tokens, lengths), lengths)

  def loss_sums(self, batch) -> tuple:
    """The velocity MSE summed over the examples that have a caption, with weight = their count
    (the trainer divides by it: the mean per example). Also x0_mse (the implied clean-image error
    t^2 |v - v*|^2, comparable across t), the mean time and the fraction of null-conditioned rows."""
    c = self.config
    x0, ae_mse = self._flow_data(to_model_space(batch["image"]))
    tokens, lengths = caption_tokens(batch["target_out"], batch["target_mask"])
    b = x0.shape[0]
    valid = (lengths > 0).astype(jnp.float32)
    # The trainer's per-step key (mmjax.train.step: rngs "sample", folded with the step and microbatch).
    k_t, k_eps, k_drop = jax.random.split(self.make_rng("sample"), 3)
    t = flow_matching.sample_t(k_t, b, str(c.t_sampling), float(c.t_mean), float(c.t_std))
    eps = jax.random.normal(k_eps, x0.shape, jnp.float32)
    x_t = flow_matching.interpolate(x0, eps, t)
    text = self.encode_text(tokens, lengths)
    cond_len, dropped = flow_matching.drop_condition(k_drop, lengths, float(c.cond_dropout))
    v = self.velocity(x_t, t, text, cond_len)
    per = flow_matching.loss(v, x0, eps)
    sums = {
      "x0_mse": jnp.sum(valid * jnp.square(t) * per),
      "t_mean": jnp.sum(valid * t),
      "null_condition_fraction": jnp.sum(valid * dropped),
      "weight": jnp.sum(valid),
    }
    total = per
    if ae_mse is not None:
      sums["autoencoder_recon_mse"] = jnp.sum(valid * ae_mse)
      total = per + float(c.get("autoencoder_weight", 1.0)) * ae_mse
    return jnp.sum(valid * total), sums
