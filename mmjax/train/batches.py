"""What a train batch holds for a config: its keys, dummy batches of its shapes, and the check that
the dataset carries the media the model reads."""

from __future__ import annotations

import ml_collections
import numpy as np

from mmjax.data.config import (
  CAPTION_FIELDS,
  captions_with_questions,
  examples_per_image,
  images_per_batch,
  max_audio_samples,
  stream_fields,
)
from mmjax.encoders import AudioEncoder
from mmjax.models import model_class, vlm

# Batch keys of the images' captions that ride along with their questions (data.captions_with_questions).
CAPTION_KEYS = tuple(CAPTION_FIELDS)

# What to set so the dataset carries a modality's batch keys (for the errors of check_data_media).
_MEDIA_DATA_KEYS = {
  "audio": "config.data.spoken_questions=True (spoken questions), or give the records their own sound "
  "(manifests: \"audio\" files; a procedural dataset: its own sound option)",
  "video": "config.data.video_frames=N (N > 0 frames per clip; manifests: \"video\" entries)",
}


def _riding_streams(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Text streams beside a train batch's own rows -> their rows per image: the captions that ride
  along with the questions (data.captions_with_questions), or every counted task of
  data.examples_per_image but the first (which is the batch's own rows)."""
  if captions_with_questions(config):
    return {"caption": 1}
  return dict(list(examples_per_image(config).items())[1:])


def batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch keys the train step reads: the model kind's, plus those of the text streams that ride
  beside its rows (data.captions_with_questions, data.examples_per_image)."""
  riding = tuple(k for stream in _riding_streams(config) for k in stream_fields(stream))
  return model_class(config.model).batch_keys(config.model) + riding


def check_data_media(config: ml_collections.ConfigDict, data_media) -> None:
  """Fails at start when the model reads a medium the dataset does not carry (`data_media`:
  pipeline.Data.media), or reads audio at another sample rate than the data's."""
  for m in vlm.media_modalities(config.model):
    if m not in data_media:
      raise ValueError(
        f"config.model.{m} turns on the {m} encoder, but the dataset has no {m}: set "
        f"{_MEDIA_DATA_KEYS[m]}, or remove config.model.{m}."
      )
  if "audio" in vlm.media_modalities(config.model):
    model_rate = int(config.model.audio.get("sample_rate", AudioEncoder.sample_rate))
    data_rate = int(config.data.audio_sample_rate)
    if model_rate != data_rate:
      raise ValueError(
        f"config.model.audio.sample_rate={model_rate} but config.data.audio_sample_rate={data_rate}: "
        "the audio encoder's mel filters assume its own rate; set them equal."
      )


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict:
  """A batch of the shapes the pipeline makes for `config` (with the media the model reads)."""
  s = config.data.image_size
  batch = {
    "image": np.zeros((batch_size, s, s, 3), np.uint8),
    "prompt": np.ones((batch_size, config.data.max_prompt_len), np.int32),
    "prompt_len": np.full((batch_size,), config.data.max_prompt_len, np.int32),
    "target_in": np.ones((batch_size, config.data.max_target_len), np.int32),
    "target_out": np.ones((batch_size, config.data.max_target_len), np.int32),
    "target_mask": np.ones((batch_size, config.data.max_target_len), np.float32),
  }
  media = vlm.media_modalities(config.model)
  if "audio" in media:
    n = max_audio_samples(config.data)
    batch |= {"audio": np.zeros((batch_size, n), np.int16), "audio_len": np.full((batch_size,), n, np.int32)}
  if "video" in media:
    t = int(config.data.video_frames)
    if t <= 0:
      raise ValueError(
        f"config.model.video turns on the video encoder, but config.data.video_frames={t}: set "
        f"{_MEDIA_DATA_KEYS['video']}."
      )
    batch |= {"video": np.zeros((batch_size, t, s, s, 3), np.uint8), "video_len": np.full((batch_size,), t, np.int32)}
  return batch


def dummy_train_batch(config: ml_collections.ConfigDict) -> dict:
  """A global train batch of the shapes the pipeline makes for `config`: batch_size rows, with
  data.questions_per_image G > 1 batch_size / G images, and with data.captions_with_questions
  their captions (CAPTION_KEYS); with data.examples_per_image, images and one stream per counted
  task (its first task's as the batch's own rows)."""
  images = images_per_batch(config)
  counts = examples_per_image(config)
  own = images * next(iter(counts.values())) if counts else config.batch_size
  batch = dummy_batch(config, own)
  batch["image"] = batch["image"][:images]
  for stream, n in _riding_streams(config).items():
    rows = dummy_batch(config, images * n)
    batch |= {key: rows[field] for key, field in stream_fields(stream).items()}
  return batch
