"""The one record schema shared by every mmjax dataset (shapes scenes and manifests).

One record per image:

* ``image``: uint8 [H, W, 3] (PNG-encoded on disk by TFDS),
* ``questions`` / ``answers`` / ``question_types``: parallel text sequences (one entry per
  question; question types are attribute/spatial/relational for shapes and "vqa" for manifests),
* ``captions``: text sequence (possibly empty),
* ``id``: unique text id of the record.
"""
from __future__ import annotations

import tensorflow_datasets as tfds

TEXT_KEYS = ("questions", "answers", "question_types", "captions")


def record_features(image_size: int) -> tfds.features.FeaturesDict:
  """The TFDS FeaturesDict of the record schema for square ``image_size`` images."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="png"),
      "questions": tfds.features.Sequence(tfds.features.Text()),
      "answers": tfds.features.Sequence(tfds.features.Text()),
      "question_types": tfds.features.Sequence(tfds.features.Text()),
      "captions": tfds.features.Sequence(tfds.features.Text()),
      "id": tfds.features.Text(),
  })
