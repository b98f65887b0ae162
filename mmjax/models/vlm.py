"""Vision-language model: image encoder + text encoder (+ audio / video encoders) -> fusion -> causal decoder.

Optional media encoders are switched on by config sections (absent or empty = off, so older
configs and checkpoints build exactly the image + text model):

  config.model.audio = {AudioEncoder fields (width, depth, frontend, n_mels, sample_rate, ...),
                        mask_padding: True}
  config.model.video = {VideoEncoder fields (width, depth, patch_size, tubelet_t, ...),
                        mask_padding: True}

Their tokens join the fusion's media dict as "audio" / "video". Samples (frames) past
`audio_len` (`video_len`) are zeroed before encoding, so what padding holds never matters. With
`mask_padding` (default) the encoder and the fusion also ignore the padded tokens: per-example
token lengths come from `audio_len` through the encoder's subsampling (`video_len` through the
tubelets). Only fusion families that mask padded media can take lengths
(`Fusion.masks_padded_media`: flamingo always, qformer for the last modality in name order);
with another family `mask_padding=True` is an error naming the config keys, and
`mask_padding=False` makes the model read the whole fixed-length window (padding included) as the
clip: right when every clip fills it (e.g. 1 s object sounds with data.max_audio_seconds=1).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mmjax import registry
from mmjax.decoders import Decoder
from mmjax.encoders import AudioEncoder, TextEncoder, VideoEncoder
from mmjax.encoders.video import num_valid_tokens
from mmjax.fusion import Conditioning, base as fusion_base

# Text streams: prompts and their teacher-forced targets that read a batch's images. "" is the batch's
# own rows (STREAM_KEYS); another stream's keys are its name, "_" and the key without "target_" (the
# images' captions, data.captions_with_questions: caption_prompt, caption_prompt_len, caption_in,
# caption_out, caption_mask; a task's examples, data.examples_per_image: detect_prompt, ...).
# loss_sums encodes the images once and decodes every stream a batch carries off that encoding: a
# stream is its keys in the batch, found by the "<name>_in" key (text_streams).
STREAM_KEYS = ("prompt", "prompt_len", "target_in", "target_out", "target_mask")


def stream_keys(stream: str) -> dict[str, str]:
  """STREAM_KEYS -> the batch keys of text stream `stream`."""
  return {k: f"{stream}_{k.removeprefix('target_')}" if stream else k for k in STREAM_KEYS}


def text_streams(batch) -> tuple[str, ...]:
  """The text streams `batch` carries: "" (its own rows) and, sorted, every name with a
  "<name>_in" key."""
  return ("",) + tuple(sorted(k.removesuffix("_in") for k in batch if k.endswith("_in") and k != "target_in"))


# The batch keys every VLM loss reads; batch_keys(model_config) adds the media its encoders read.
BATCH_KEYS = ("image",) + STREAM_KEYS

# Optional media: modality -> {batch key: rank}. Keyword arguments of encode / __call__ and batch keys.
MEDIA_INPUTS = {"audio": {"audio": 2, "audio_len": 1}, "video": {"video": 5, "video_len": 1}}
_ENCODERS = {"audio": AudioEncoder, "video": VideoEncoder}
INT16_SCALE = 32768.0  # int16 waveforms -> [-1, 1]


def media_modalities(model_config) -> tuple[str, ...]:
  """The optional media whose encoder `model_config` switches on (a non-empty section)."""
  return tuple(m for m in MEDIA_INPUTS if model_config[m])


def media_input_keys(model_config) -> tuple[str, ...]:
  """Batch keys the model reads besides image, prompt and prompt_len, e.g. ("audio", "audio_len")."""
  return tuple(k for m in media_modalities(model_config) for k in MEDIA_INPUTS[m])


def _media_settings(model_config, modality: str) -> tuple[dict, bool]:
  """(encoder fields, mask_padding) of config.model.<modality>."""
  section = model_config[modality]
  settings = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  mask = settings.pop("mask_padding", True)
  return settings, bool(mask)


def check_fusion_media(model_config) -> None:
  """Raises when a media section asks for masked padding that the fusion family cannot do."""
  modalities = media_modalities(model_config)
  family = fusion_base.family(model_config.fusion.name)
  for m in modalities:
    if _media_settings(model_config, m)[1] and not family.masks_padded_media(m, ("image",) + modalities):
      raise ValueError(
        f"config.model.{m}.mask_padding=True, but config.model.fusion.name={model_config.fusion.name!r} cannot mask "
        f"padded {m} tokens next to {sorted(set(('image',) + modalities) - {m})}: use a fusion family that can "
        f"(config.model.fusion.name='flamingo'), or set config.model.{m}.mask_padding=False to read every "
        f"{m} clip as the whole fixed-length window, zero padding included (right only when clips fill it)."
      )


def image_encoder_block(name: str) -> str:
  """The config.model key holding the fields of the image encoder `name`: the name itself for a
  built-in ("vit" -> model.vit), the module's last component for "module.path:Class"
  ("mmjax.projects.shapes.objects:ObjectEncoder" -> model.objects)."""
  return name.partition(":")[0].rsplit(".", 1)[-1]


def image_encoder(model_config, knobs: dict | None = None, **kwargs) -> nn.Module:
  """The image encoder `model_config.image_encoder` names (mmjax.registry floor "encoders"; "vit"
  by default), built from its config block (image_encoder_block) and `kwargs`. The memory `knobs`
  (remat, scan_layers) go only to an encoder that has them, as for fusion modules."""
  name = str(model_config.image_encoder)
  cls = registry.get("encoders", name, "config.model.image_encoder")
  block = image_encoder_block(name)
  if block not in model_config:
    raise ValueError(f"config.model.image_encoder={name!r} needs a config.model.{block} block with its fields.")
  knobs = {k: v for k, v in (knobs or {}).items() if k in cls.__dataclass_fields__}
  return cls(**model_config[block].to_dict(), **knobs, **kwargs)


class VisionLanguageModel(nn.Module):
  """Answers prompts about images (and sounds / videos). Built from `config.model` by `build_model`.

  Methods (media keyword arguments: see MEDIA_INPUTS; required exactly when the model has the encoder):
    __call__(images, prompt, prompt_len, target_in, *, audio=None, audio_len=None, video=None, video_len=None)
        -> logits [B, Lt, V] (teacher forcing)
    encode(images, prompt, prompt_len, *, audio=..., ...) -> Conditioning
    stream_logits(batch) -> {text stream: logits}, every stream off one encoding of the batch's
      images (text_streams); loss_sums(batch) sums their cross-entropy
    decode(tokens, cond, start) -> logits (with the `cache` collection mutable)
    prefill_length(cond) -> int: positions a prefill decode call (start=0, empty tokens) writes
      before the first generated token (the prefix of prefix-LM fusions; 0 otherwise).

  audio: int16 [B, N] (scaled to [-1, 1]) or float [B, N]; audio_len int32 [B] valid samples.
  video: uint8 [B, T, H, W, 3]; video_len int32 [B] valid frames. Lengths None = all valid.
  """

  config: ml_collections.ConfigDict
  vocab_size: int
  location_bins: int = 0  # the vocabulary's last ids are location tokens (config.data.location_bins)

  # Model-kind hooks (mmjax.models.kind).
  evaluator = "generative"  # evaluated by generation: VQA accuracy, CIDEr-D, matching accuracy
  train_tasks = None  # every task of the dataset
  progress_metric = "token_accuracy"
  accumulates_gradients = True  # the loss is a sum over target tokens

  @staticmethod
  def check_config(config: ml_collections.ConfigDict) -> None:
    check_fusion_media(config.model)

  @staticmethod
  def batch_keys(model_config) -> tuple[str, ...]:
    return BATCH_KEYS + media_input_keys(model_config)

  @staticmethod
  def init_inputs(model_config, batch) -> tuple[tuple, dict]:
    return (
      (batch["image"], batch["prompt"], batch["prompt_len"], batch["target_in"]),
      media_inputs(model_config, batch),
    )

  def loss_sums(self, batch) -> tuple:
    """Teacher-forced cross-entropy summed over target tokens (weighted by target_mask), with the
    correct-token count: sums, not means, so microbatches add up exactly to the whole batch. Every
    text stream the batch carries (text_streams: e.g. its images' captions, data.captions_with_questions,
    or other tasks' examples, data.examples_per_image) adds its tokens to the same sums."""
    xent = correct = weight = 0.0
    for stream, logits in self.stream_logits(batch).items():
      keys = stream_keys(stream)
      labels, weights = batch[keys["target_out"]], batch[keys["target_mask"]]
      xent += (self.decoder.xent(logits, labels) * weights).sum()
      correct += ((logits.argmax(-1) == labels) * weights).sum()
      weight += weights.sum()
    return xent, {"token_accuracy": correct, "weight": weight}

  def stream_logits(self, batch) -> dict:
    """Teacher-forced logits of every text stream of `batch` (stream name -> [rows, Lt, V]), off one
    encoding of its images (and audio / video) that each stream's prompts read through the fusion:
    G consecutive prompts per image when the stream has G times as many rows as there are images."""
    media = self._encode_media(batch["image"], **media_inputs(self.config, batch))
    out = {}
    for stream in text_streams(batch):
      keys = stream_keys(stream)
      cond = self._condition(media, batch[keys["prompt"]], batch[keys["prompt_len"]], stream)
      out[stream] = self.decoder(batch[keys["target_in"]], cond)
    return out

  def setup(self):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    impl = c.attention_implementation
    # Memory knobs: rematerialisation policy and scanning over layers.
    knobs = dict(remat=str(c.remat), scan_layers=bool(c.scan_layers))
    self.image_encoder = image_encoder(c, knobs, implementation=impl, dtype=dtype)
    self.text_encoder = TextEncoder(self.vocab_size, **c.text.to_dict(), implementation=impl, dtype=dtype, **knobs)
    check_fusion_media(c)
    self.media = media_modalities(c)
    self.mask_padding = {m: _media_settings(c, m)[1] for m in self.media}
    if "audio" in self.media:
      self.audio_encoder = AudioEncoder(**_media_settings(c, "audio")[0], implementation=impl, dtype=dtype)
    if "video" in self.media:
      self.video_encoder = VideoEncoder(**_media_settings(c, "video")[0], implementation=impl, dtype=dtype)
    family = fusion_base.family(c.fusion.name)
    fusion_knobs = {k: v for k, v in knobs.items() if k in family.__dataclass_fields__}
    self.fusion = family(
      width=c.decoder.width,
      implementation=impl,
      dtype=dtype,
      **fusion_knobs,
      **{k: v for k, v in c.fusion.to_dict().items() if k != "name"},
    )
    self.decoder = Decoder(
      self.vocab_size,
      **c.decoder.to_dict(),
      location_bins=self.location_bins,
      cross_attention_every=self.fusion.cross_attention_every,
      gated_cross_attention=self.fusion.gated,
      implementation=impl,
      dtype=dtype,
      **knobs,
    )

  def encode(
    self, images, prompt, prompt_len, *, audio=None, audio_len=None, video=None, video_len=None
  ) -> Conditioning:
    media = self._encode_media(images, audio=audio, audio_len=audio_len, video=video, video_len=video_len)
    return self._condition(media, prompt, prompt_len)

  def _encode_media(self, images, *, audio=None, audio_len=None, video=None, video_len=None) -> dict:
    """The fusion's media dict: modality -> (tokens [B, N, D], valid tokens [B] or None)."""
    given = {"audio": (audio, audio_len), "video": (video, video_len)}
    for m, (x, _) in given.items():
      if (x is None) == (m in self.media):
        raise ValueError(
          f"VisionLanguageModel: the model has an encoder for {m} (config.model.{m}) but no {m} was given."
          if x is None
          else f"VisionLanguageModel: {m} was given but the model has no {m} encoder (config.model.{m} is off)."
        )
    media = {"image": (self.image_encoder(images), None)}
    if audio is not None:
      media["audio"] = self._audio_tokens(audio, audio_len)
    if video is not None:
      media["video"] = self._video_tokens(video, video_len)
    return media

  def _condition(self, media, prompt, prompt_len, stream: str = "") -> Conditioning:
    """The fusion of encoded `media` with a stream's prompts (G consecutive prompts per image when
    there are G times as many prompts as images)."""
    n_images = media["image"][0].shape[0]
    if prompt.shape[0] != n_images:
      self._check_shared_images(n_images, prompt.shape[0], len(media) > 1, stream)
    text_tokens = self.text_encoder(prompt, prompt_len)
    return self.fusion(media, (text_tokens, prompt_len))

  def _check_shared_images(self, n_images: int, n_prompts: int, other_media: bool, stream: str = ""):
    """Several prompts per image (data.questions_per_image): G consecutive prompts read one image."""
    if n_images == 0 or n_prompts % n_images:
      raise ValueError(
        f"VisionLanguageModel: {n_prompts} {stream + ' ' if stream else ''}prompts cannot share {n_images} images "
        "(G consecutive prompts per image needs the prompt batch to be a multiple of the image batch)."
      )
    if other_media or not self.fusion.shares_media_across_prompts():
      raise ValueError(
        f"VisionLanguageModel: {n_prompts // n_images} prompts per image (config.data.questions_per_image) need a "
        "fusion whose memory is the image alone: config.model.fusion.name='cross_attention' with "
        "config.model.fusion.text_as='prefix', and no audio or video; got "
        f"fusion.name={self.config.fusion.name!r}" + (" with audio/video." if other_media else ".")
      )

  def _audio_tokens(self, audio, audio_len):
    """-> (tokens [B, N', D], valid tokens [B] or None)."""
    wave = audio.astype(jnp.float32)
    if audio.dtype == jnp.int16:
      wave = wave / INT16_SCALE
    if audio_len is not None:
      wave = jnp.where(jnp.arange(wave.shape[1])[None] < audio_len[:, None], wave, 0.0)
    lengths = audio_len.astype(jnp.int32) if self.mask_padding["audio"] and audio_len is not None else None
    return self.audio_encoder(wave, lengths)

  def _video_tokens(self, video, video_len):
    if video_len is not None:
      video = jnp.where(
        (jnp.arange(video.shape[1])[None] < video_len[:, None])[:, :, None, None, None],
        video,
        jnp.zeros((), video.dtype),
      )
    if not self.mask_padding["video"] or video_len is None:
      return self.video_encoder(video), None
    video_len = video_len.astype(jnp.int32)
    n = num_valid_tokens(video_len, video.shape, self.video_encoder.patch_size, self.video_encoder.tubelet_t)
    return self.video_encoder(video, video_len), n.astype(jnp.int32)

  def decode(self, tokens, cond: Conditioning, start):
    return self.decoder(tokens, cond, start=start, decode=True)

  @staticmethod
  def prefill_length(cond: Conditioning) -> int:
    return 0 if cond.prefix is None else int(cond.prefix.shape[1])

  def __call__(self, images, prompt, prompt_len, target_in, *, audio=None, audio_len=None, video=None, video_len=None):
    cond = self.encode(images, prompt, prompt_len, audio=audio, audio_len=audio_len, video=video, video_len=video_len)
    return self.decoder(target_in, cond)


def media_inputs(model_config, batch) -> dict:
  """The media keyword arguments of the model, taken from `batch` (a dict of arrays)."""
  keys = media_input_keys(model_config)
  missing = [k for k in keys if k not in batch]
  if missing:
    raise KeyError(
      f"the batch has no {missing}, which the model's media encoders read "
      f"(config.model.{'/'.join(media_modalities(model_config))})."
    )
  return {k: batch[k] for k in keys}
