"""The TFDS catalog's coco_captions and ref_coco -> manifests (mmjax.data.formats, config.data.tfds_name): the
converters on examples in exactly TFDS's feature layout, and the hook end to end on mocked prepared datasets
(tfds.testing.mock_data, fed hand-made examples through the datasets' own features): converted once, then
prepared as an ordinary manifest dataset."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from mmjax.data import config as config_lib, examples, formats, manifest as manifest_lib, prepare, tfds_builders


def _jpeg(w=12, h=8, value=100) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (w, h), (value, value, value)).save(buf, format="JPEG")
  return buf.getvalue()


def _coco_example(iid: int, captions: list[str]) -> dict:
  """A coco_captions example as tfds.as_numpy gives it with the image left encoded (SkipDecoding)."""
  return {
    "image": _jpeg(value=iid % 256),
    "image/filename": f"COCO_val2014_{iid:012d}.jpg".encode(),
    "image/id": np.int64(iid),
    "captions": {
      "id": np.arange(len(captions), dtype=np.int64),
      "text": np.array([c.encode() for c in captions], dtype=object),
    },
    "objects": {
      "id": np.zeros([0], np.int64),
      "area": np.zeros([0], np.int64),
      "bbox": np.zeros([0, 4], np.float32),
      "label": np.zeros([0], np.int64),
      "is_crowd": np.zeros([0], bool),
    },
  }


def test_tfds_coco_captions_lines(tmp_path):
  pixels = np.full((6, 4, 3), 7, np.uint8)
  exs = [
    _coco_example(139, ["A dog sleeping on a couch.", " a brown dog lying down \n", "  "]),
    _coco_example(285, []),  # no caption: no line, no file
    {**_coco_example(632, ["a cat in a box"]), "image": pixels},  # a decoded image is stored as PNG
  ]
  lines = formats.tfds_coco_captions(iter(exs), tmp_path / "images", split="validation")
  img = str(tmp_path / "images" / "139.jpg")
  assert lines == [
    {"image": img, "caption": "A dog sleeping on a couch.", "split": "validation"},
    {"image": img, "caption": "a brown dog lying down", "split": "validation"},
    {"image": str(tmp_path / "images" / "632.png"), "caption": "a cat in a box", "split": "validation"},
  ]
  assert sorted(os.listdir(tmp_path / "images")) == ["139.jpg", "632.png"]
  assert (tmp_path / "images" / "139.jpg").read_bytes() == exs[0]["image"]  # copied, not re-encoded
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "images" / "632.png")), pixels)


class _Ragged:
  """What tfds.as_numpy leaves of a nested sequence (a tf.RaggedTensor): something with to_list()."""

  def __init__(self, rows):
    self.rows = rows

  def to_list(self):
    return self.rows


def _ref_example(iid: int, boxes, expressions) -> dict:
  """A ref_coco example as tfds.as_numpy gives it (image and masks left encoded): boxes normalised
  [ymin, xmin, ymax, xmax] float32, the expressions of each object a row of a ragged "raw"."""
  n = len(boxes)
  return {
    "image": _jpeg(),
    "image/id": np.int64(iid),
    "objects": {
      "id": np.arange(n, dtype=np.int64),
      "area": np.ones([n], np.int64),
      "bbox": np.asarray(boxes, np.float32).reshape(n, 4),
      "label": np.ones([n], np.int64),
      "gt_box_index": np.arange(n, dtype=np.int64),
      "mask": np.array([b"png"] * n, dtype=object),
      "refexp": {
        "raw": _Ragged([[e.encode() for e in row] for row in expressions]),
        "refexp_id": _Ragged([list(range(len(row))) for row in expressions]),
      },
    },
    "coco_annotations": {"id": np.arange(n, dtype=np.int64), "bbox": np.asarray(boxes, np.float32).reshape(n, 4)},
  }


def test_tfds_ref_coco_lines(tmp_path, caplog):
  exs = [
    _ref_example(
      42,
      [[0.1, 0.2, 0.5, 0.6], [0.25, 0.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.9]],  # the last has no height
      [["the dog on the left", "left  dog"], ["a cat <big>", "cat"], ["lost dog"]],
    ),
    _ref_example(73, [[0.0, 0.0, 0.5, 0.5]], [[""]]),  # nothing usable: no line
  ]
  lines = formats.tfds_ref_coco(exs, tmp_path / "images", split="train")
  assert lines == [
    {
      "image": str(tmp_path / "images" / "42.jpg"),
      "refer": [
        {"expression": "the dog on the left", "box": [0.1, 0.2, 0.5, 0.6]},
        {"expression": "left dog", "box": [0.1, 0.2, 0.5, 0.6]},
        {"expression": "cat", "box": [0.25, 0.0, 1.0, 1.0]},
      ],
      "box_format": "normalized",
      "split": "train",
    }
  ]
  assert os.listdir(tmp_path / "images") == ["42.jpg"]
  assert "ref_coco train: skipped 1 objects with a zero-area box and 2 expressions" in caplog.text
  # The lines are a valid manifest: each expression one "refer" question on its normalised box.
  path = formats.write_manifest(lines, tmp_path / "m.jsonl")
  (rec,) = manifest_lib.parse_manifest(path)["train"]
  assert rec.refers == [
    ("the dog on the left", (0.1, 0.2, 0.5, 0.6)),
    ("left dog", (0.1, 0.2, 0.5, 0.6)),
    ("cat", (0.25, 0.0, 1.0, 1.0)),
  ]


# ------------------------------------------------------------------------------------ the config hook

# Per TFDS split of coco_captions, its examples (image ids and captions).
COCO = {
  "train": [(1, ["a dog on grass", "a dog running"]), (2, ["a cat on a mat"]), (3, ["two dogs"]), (4, ["a cat"])],
  "restval": [(5, ["a dog in a car"])],
  "val": [(6, ["a cat asleep"])],
  "test": [(7, ["a dog with a ball"])],
}
# Per TFDS split of ref_coco (its default config, refcoco_unc), its examples: image id, then per object
# its normalised [ymin, xmin, ymax, xmax] box and expressions.
REF = {
  "train": [(1, [([0.1, 0.2, 0.5, 0.6], ["the left dog", "dog"]), ([0.0, 0.5, 1.0, 1.0], ["cat"])]), (2, [])],
  "validation": [(3, [([0.25, 0.25, 0.75, 0.75], ["the cat"])])],
  "testA": [(4, [([0.5, 0.0, 1.0, 0.5], ["a dog"])])],
  "testB": [(5, [([0.0, 0.0, 0.5, 0.5], ["the dog", "top dog"])])],
}


def _coco_tfds(iid, captions) -> dict:
  """A coco_captions example as its TFDS builder yields it (before encoding)."""
  return {
    "image": io.BytesIO(_jpeg(value=iid)),
    "image/filename": f"COCO_val2014_{iid:012d}.jpg",
    "image/id": iid,
    "objects": [],
    "captions": [{"text": c, "id": k} for k, c in enumerate(captions)],
  }


def _ref_tfds(iid, objects) -> dict:
  """A ref_coco example as its TFDS builder yields it (before encoding)."""
  return {
    "image": io.BytesIO(_jpeg(value=iid)),
    "image/id": iid,
    "objects": [
      {
        "id": k,
        "area": 1,
        "bbox": _bbox(box),
        "label": 1,
        "gt_box_index": k,
        "mask": np.zeros((8, 12, 3), np.uint8),
        "refexp": [{"refexp_id": j, "raw": e} for j, e in enumerate(expressions)],
      }
      for k, (box, expressions) in enumerate(objects)
    ],
    "coco_annotations": [{"id": k, "area": 1, "bbox": _bbox(box), "label": 1} for k, (box, _) in enumerate(objects)],
  }


def _bbox(box):
  import tensorflow_datasets as tfds

  return tfds.features.BBox(*box)


def _fake_prepared(tfds, name: str, data_dir: str, splits: dict) -> None:
  """The metadata TFDS writes when it prepares ``name`` (dataset_info.json with the splits), without
  data: enough for the builder to count as prepared and list its splits; mock_data stands in for reading."""
  builder = tfds.builder(name, data_dir=data_dir)
  infos = [
    tfds.core.SplitInfo(
      name=s,
      shard_lengths=[len(exs)],
      num_bytes=0,
      filename_template=tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", dataset_name=builder.name
      ),
    )
    for s, exs in splits.items()
  ]
  builder.info.set_splits(tfds.core.SplitDict(infos))
  builder.data_path.mkdir(parents=True, exist_ok=True)
  builder.info.write_to_directory(builder.data_path)


def _as_dataset(splits: dict, make_example, fail_on: str = ""):
  """A ``FileReaderBuilder._as_dataset`` for mock_data: ``make_example(*row)`` of each row of the split
  in ``splits``, encoded, serialised and decoded by the dataset's own features with the caller's decoders,
  as a real read would be (mock_data's random examples break TFDS's sequences of text)."""
  import tensorflow as tf

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    if split == fail_on:
      raise RuntimeError(f"reading {split} failed")
    features = self.info.features
    serialized = [features.serialize_example(make_example(*row)) for row in splits[str(split)]]
    return tf.data.Dataset.from_tensor_slices(serialized).map(
      lambda s: features.deserialize_example(s, decoders=decoders)
    )

  return as_dataset


def _config(data_dir: str, tfds_name: str = "coco_captions"):
  c = config_lib.default_data_config()
  c.data_dir = data_dir
  c.image_size = 16
  c.tfds_name = tfds_name
  return c


def _mocked(tfds, data_dir: str, as_dataset_fn):
  return tfds.testing.mock_data(
    data_dir=data_dir, policy=tfds.testing.MockPolicy.USE_FILES, as_dataset_fn=as_dataset_fn
  )


def test_tfds_name_converts_coco_captions_once(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  _fake_prepared(tfds, "coco_captions", data_dir, COCO)
  config = _config(data_dir)
  # The conversion reads inside the mock; mmjax's own TFDS build runs outside it (mock_data turns every
  # download_and_prepare into a no-op).
  with _mocked(tfds, data_dir, _as_dataset(COCO, _coco_tfds)):
    cfg = prepare.builder_config(config)
  out = os.path.join(data_dir, formats.TFDS_MANIFESTS, "coco_captions", "2014", "1.1.0")
  assert isinstance(cfg, tfds_builders.ManifestConfig) and cfg.manifest_path == os.path.join(out, "manifest.jsonl")
  with open(cfg.manifest_path) as f:
    lines = [json.loads(line) for line in f]
  assert lines[:2] == [
    {"image": "images/train/1.jpg", "caption": "a dog on grass", "split": "train"},
    {"image": "images/train/1.jpg", "caption": "a dog running", "split": "train"},
  ]
  assert not [f for f in os.listdir(os.path.dirname(out)) if f.startswith(".")]  # no temporary folder left
  with open(os.path.join(out, "images", "train", "1.jpg"), "rb") as f:
    assert f.read() == _jpeg(value=1)  # the bytes TFDS stored, not re-encoded

  builder = prepare.prepare_builder(config)  # no mock: the converted manifest is read, not TFDS
  assert tfds_builders.split_sizes(builder) == {"train": 5, "validation": 1, "test": 1}  # restval is trained on
  texts = {r["id"]: r["captions"] for r in examples.read_texts(builder, "train")}
  assert texts["images/train/1.jpg"] == ["a dog on grass", "a dog running"]
  assert texts["images/restval/5.jpg"] == ["a dog in a car"]
  assert [r["captions"] for r in examples.read_texts(builder, "test")] == [["a dog with a ball"]]


def test_tfds_name_converts_ref_coco(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  _fake_prepared(tfds, "ref_coco", data_dir, REF)
  config = _config(data_dir, "ref_coco")
  with _mocked(tfds, data_dir, _as_dataset(REF, _ref_tfds)):
    prepare.builder_config(config)
  builder = prepare.prepare_builder(config)
  assert tfds_builders.split_sizes(builder) == {"train": 1, "validation": 1, "test": 2}  # testA and testB: test
  (train,) = examples.read_texts(builder, "train")  # image 2 has no expression: no record
  assert train["id"] == "images/train/1.jpg" and set(train["question_types"]) == {"refer"}
  assert train["questions"] == ["detect the left dog", "detect dog", "detect cat"]
  assert train["answers"][2] == "<box>0.0 0.5 1.0 1.0</box>"
  assert sorted(r["id"] for r in examples.read_texts(builder, "test")) == ["images/testA/4.jpg", "images/testB/5.jpg"]


def test_tfds_name_failed_conversion_leaves_nothing(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  data_dir = str(tmp_path / "tfds")
  _fake_prepared(tfds, "coco_captions", data_dir, COCO)
  with _mocked(tfds, data_dir, _as_dataset(COCO, _coco_tfds, fail_on="test")):
    with pytest.raises(RuntimeError, match="reading test failed"):
      prepare.builder_config(_config(data_dir))
  assert os.listdir(os.path.join(data_dir, formats.TFDS_MANIFESTS, "coco_captions", "2014")) == []


def test_tfds_name_errors(tmp_path):
  data_dir = str(tmp_path / "tfds")
  config = _config(data_dir)
  with pytest.raises(ValueError) as e:
    prepare.builder_config(config)  # TFDS has not prepared it: nothing is downloaded or written
  assert "never downloads it: prepare it once with `tfds build coco_captions --data_dir=" in str(e.value)
  assert "\n" not in str(e.value)
  assert not os.path.exists(os.path.join(data_dir, formats.TFDS_MANIFESTS))
  with pytest.raises(ValueError, match="tfds build ref_coco/refcocog_umd .*--manual_dir"):
    prepare.builder_config(_with(config, tfds_name="ref_coco/refcocog_umd"))
  with pytest.raises(ValueError, match="the ones mmjax reads: coco_captions, ref_coco"):
    prepare.builder_config(_with(config, tfds_name="mnist"))
  with pytest.raises(ValueError, match="both name the data: set only one"):
    prepare.source(_with(config, manifest="data/m.jsonl"))


def _with(config, **kw):
  c = config.copy_and_resolve_references()
  c.update(kw)
  return c
