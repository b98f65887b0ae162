"""The one record schema shared by every mmjax dataset (manifests and procedural datasets).

One record per image:

* ``image``: uint8 [H, W, 3] (PNG-encoded on disk by TFDS),
* ``questions`` / ``answers`` / ``question_types``: parallel text sequences (one entry per
  question; question types are the dataset's own, "vqa" for manifests),
* ``captions``: text sequence (possibly empty),
* ``id``: unique text id of the record.

Optional media features, present only when the dataset's config enables them (a dataset without
them has exactly the features above, so data prepared before they existed stays valid):

* ``question_audio`` int16 [N] + ``question_audio_lengths`` int32 [num questions]: every
  question's speech, concatenated in question order, and the number of samples of each
  (``pack_clips`` / ``unpack_clips``). Concatenated because TFDS cannot serialise a sequence of
  variable-length tensors (it stacks them);
* ``scene_audio`` int16 [n]: the record's own sound (a procedural dataset's sounds; manifests: the
  "audio" file); empty ([0]) for a record that has none;
* ``video`` uint8 [T, H, W, 3]: the record's clip; [0, H, W, 3] for a record that has none.

Audio is mono at the dataset's sample rate. The media tensors are stored as zlib-compressed bytes:
tf.train.Example would otherwise store each int16 sample as a varint of up to 10 bytes, and the
shapes frames (flat colours on black) compress to a few percent.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

TEXT_KEYS = ("questions", "answers", "question_types", "captions")
MEDIA_KEYS = ("question_audio", "question_audio_lengths", "scene_audio", "video")


def _compressed(shape, dtype) -> tfds.features.Tensor:
  return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.ZLIB)


def record_features(
  image_size: int, *, question_audio: bool = False, scene_audio: bool = False, video: bool = False
) -> tfds.features.FeaturesDict:
  """The TFDS FeaturesDict of the record schema for square ``image_size`` images."""
  features = {
    "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="png"),
    "questions": tfds.features.Sequence(tfds.features.Text()),
    "answers": tfds.features.Sequence(tfds.features.Text()),
    "question_types": tfds.features.Sequence(tfds.features.Text()),
    "captions": tfds.features.Sequence(tfds.features.Text()),
    "id": tfds.features.Text(),
  }
  if question_audio:
    features["question_audio"] = _compressed((None,), np.int16)
    features["question_audio_lengths"] = tfds.features.Tensor(shape=(None,), dtype=np.int32)
  if scene_audio:
    features["scene_audio"] = _compressed((None,), np.int16)
  if video:
    features["video"] = _compressed((None, image_size, image_size, 3), np.uint8)
  return tfds.features.FeaturesDict(features)


def no_audio() -> np.ndarray:
  return np.zeros((0,), np.int16)


def no_video(image_size: int) -> np.ndarray:
  return np.zeros((0, image_size, image_size, 3), np.uint8)


def pack_clips(clips) -> dict[str, np.ndarray]:
  """Per-question clips -> the ``question_audio`` / ``question_audio_lengths`` features."""
  clips = [np.asarray(c, np.int16) for c in clips]
  return {
    "question_audio": np.concatenate(clips) if clips else no_audio(),
    "question_audio_lengths": np.asarray([len(c) for c in clips], np.int32),
  }


def unpack_clips(record) -> list[np.ndarray]:
  """A record's ``question_audio`` split back into one int16 clip per question."""
  ends = np.cumsum(np.asarray(record["question_audio_lengths"], np.int64))
  return np.split(np.asarray(record["question_audio"], np.int16), ends[:-1]) if len(ends) else []
