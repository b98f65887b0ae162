"""Official annotation layouts -> manifests (mmjax.data.formats, experiments/convert_dataset.py): small files
in exactly the layouts of COCO Captions, VQAv2 and RefCOCO (the refer toolkit's), converted and read back as
records; bad files fail with one line naming the file and the record, and write nothing."""

import copy
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
from PIL import Image

from mmjax.data import formats, manifest as manifest_lib, tfds_builders
from tests.conftest import ROOT

# Two images of COCO's own naming: 2014 (VQAv2, RefCOCO) and 2017 (COCO Captions); w x h 40 x 30 and 20 x 50.
SIZES = {42: (40, 30), 73: (20, 50)}


def _images(d, name="COCO_val2014_{:012d}.jpg"):
  d.mkdir(parents=True, exist_ok=True)
  for iid, size in SIZES.items():
    Image.new("RGB", size, (90, 120, 150)).save(d / name.format(iid))
  return d


def _write(path, obj):
  path.write_text(json.dumps(obj))
  return path


def _coco_images(name):
  return [
    {"license": 1, "file_name": name.format(iid), "coco_url": "", "height": h, "width": w, "id": iid}
    for iid, (w, h) in SIZES.items()
  ]


# ------------------------------------------------------------------------------------------- COCO Captions

CAPTIONS = {
  "info": {"description": "COCO 2017 Dataset"},
  "licenses": [],
  "images": _coco_images("{:012d}.jpg")
  + [{"license": 1, "file_name": "000000000099.jpg", "height": 9, "width": 9, "id": 99}],  # no caption, no file
  "annotations": [
    {"image_id": 42, "id": 1, "caption": "A dog sleeping on a couch."},
    {"image_id": 73, "id": 2, "caption": "a cat in a box"},
    {"image_id": 42, "id": 3, "caption": "A brown dog lying down. "},
  ],
}


def test_coco_captions_keeps_every_caption(tmp_path):
  images = _images(tmp_path / "coco/val2017", "{:012d}.jpg")
  ann = _write(tmp_path / "coco/captions_val2017.json", CAPTIONS)
  out = tmp_path / "out/manifest.jsonl"
  summary = formats.convert("coco_captions", annotations=[ann], images=[images], splits=["train"], out=out)
  assert summary == {"path": str(out), "lines": 3, "images": {"train": 2}}
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines[0] == {
    "image": "../coco/val2017/000000000042.jpg",
    "caption": "A dog sleeping on a couch.",
    "split": "train",
  }
  recs = {r.id: r for r in manifest_lib.parse_manifest(out)["train"]}
  assert recs["../coco/val2017/000000000042.jpg"].captions == ["A dog sleeping on a couch.", "A brown dog lying down."]
  assert recs["../coco/val2017/000000000073.jpg"].captions == ["a cat in a box"]


def test_coco_captions_train_and_val_in_one_manifest(tmp_path):
  train = _images(tmp_path / "train2017", "{:012d}.jpg")
  val = tmp_path / "val2017"
  val.mkdir()
  Image.new("RGB", (8, 8)).save(val / "000000000005.jpg")
  val_captions = dict(
    CAPTIONS,
    images=[{"file_name": "000000000005.jpg", "height": 8, "width": 8, "id": 5}],
    annotations=[{"image_id": 5, "id": 9, "caption": "a dog"}],
  )
  anns = [_write(tmp_path / "train.json", CAPTIONS), _write(tmp_path / "val.json", val_captions)]
  out = tmp_path / "m.jsonl"
  summary = formats.convert(
    "coco_captions", annotations=anns, images=[train, val], splits=["train", "validation"], out=out
  )
  assert summary["images"] == {"train": 2, "validation": 1}
  parsed = manifest_lib.parse_manifest(out)
  assert [r.id for r in parsed["validation"]] == ["val2017/000000000005.jpg"] and len(parsed["train"]) == 2


# ------------------------------------------------------------------------------------------------ VQAv2


def _humans(*answers):
  return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]


HUMANS_42 = ["dog"] * 7 + ["puppy", "Dog", "dogs"]
VQA_QUESTIONS = {
  "info": {},
  "task_type": "Open-Ended",
  "data_type": "mscoco",
  "license": {},
  "data_subtype": "val2014",
  "questions": [
    {"image_id": 42, "question": "What animal is this?", "question_id": 42000},
    {"image_id": 42, "question": "Is it asleep?", "question_id": 42001},
    {"image_id": 73, "question": "How many cats are there?", "question_id": 73000},
  ],
}
VQA_ANNOTATIONS = {
  "info": {},
  "license": {},
  "data_subtype": "val2014",
  "annotations": [
    {
      "question_type": "what animal is",
      "multiple_choice_answer": "dog",
      "answers": _humans(*HUMANS_42),
      "image_id": 42,
      "answer_type": "other",
      "question_id": 42000,
    },
    {
      "question_type": "is it",
      "multiple_choice_answer": "yes",
      "answers": _humans(*["yes"] * 10),
      "image_id": 42,
      "answer_type": "yes/no",
      "question_id": 42001,
    },
    {
      "question_type": "how many",
      "multiple_choice_answer": "1",
      "answers": _humans(*["1"] * 8 + ["one", "2"]),
      "image_id": 73,
      "answer_type": "number",
      "question_id": 73000,
    },
  ],
}


def _vqa_files(tmp_path, questions=VQA_QUESTIONS, annotations=VQA_ANNOTATIONS):
  images = _images(tmp_path / "val2014")
  return (
    _write(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", questions),
    _write(tmp_path / "v2_mscoco_val2014_annotations.json", annotations),
    images,
  )


def test_vqav2_keeps_the_ten_human_answers(tmp_path):
  q, a, images = _vqa_files(tmp_path)
  out = tmp_path / "vqa.jsonl"
  formats.convert("vqav2", questions=[q], annotations=[a], images=[images], splits=["train"], out=out)
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert lines[0] == {
    "image": "val2014/COCO_val2014_000000000042.jpg",
    "question": "What animal is this?",
    "answer": "dog",
    "answers": HUMANS_42,
    "split": "train",
  }
  (r42, r73) = manifest_lib.parse_manifest(out)["train"]
  assert r42.questions == ["What animal is this?", "Is it asleep?"] and r42.answers == ["dog", "yes"]
  assert r42.human_answers == [HUMANS_42, ["yes"] * 10]
  assert r73.human_answers == [["1"] * 8 + ["one", "2"]]


def test_vqav2_prepared_records_carry_the_human_answers(tmp_path):
  """The prepared dataset stores every question's human answers (reference_answer_counts: 10 each)."""
  q, a, images = _vqa_files(tmp_path)
  out = tmp_path / "vqa.jsonl"
  formats.convert("vqav2", questions=[q], annotations=[a], images=[images], splits=["train"], out=out)
  builder = tfds_builders.prepare_manifest(str(out), str(tmp_path / "data"), image_size=16)
  assert builder.builder_config.has_reference_answers
  src = builder.as_data_source("train")
  record = next(src[i] for i in range(len(src)) if src[i]["id"] == b"val2014/COCO_val2014_000000000042.jpg")
  assert list(record["reference_answer_counts"]) == [10, 10]
  assert tfds_builders.unpack_reference_answers(record) == [HUMANS_42, ["yes"] * 10]


def test_vqav2_images_named_by_a_coco_json(tmp_path):
  """COCO 2017 images (other names, other folder) found through the "images" of a COCO json."""
  q, a, _ = _vqa_files(tmp_path)
  images = _images(tmp_path / "val2017", "{:012d}.jpg")
  coco = _write(tmp_path / "instances_val2017.json", {"images": _coco_images("{:012d}.jpg"), "annotations": []})
  out = tmp_path / "vqa.jsonl"
  formats.convert("vqav2", questions=[q], annotations=[a], images=[images], images_json=[coco], out=out)
  assert json.loads(out.read_text().splitlines()[2])["image"] == "val2017/000000000073.jpg"
  # Without the json, 2017 names are COCO names too.
  formats.convert("vqav2", questions=[q], annotations=[a], images=[images], out=out)
  assert "split" not in json.loads(out.read_text().splitlines()[0])


# ---------------------------------------------------------------------------------------------- RefCOCO

INSTANCES = {
  "info": {},
  "images": _coco_images("COCO_train2014_{:012d}.jpg"),
  "annotations": [
    {
      "segmentation": [[4, 3, 24, 3, 24, 18]],
      "area": 300.0,
      "iscrowd": 0,
      "image_id": 42,
      "bbox": [4, 3, 20, 15],
      "category_id": 18,
      "id": 500,
    },  # fmt: skip
    # Overshoots the 40 x 30 image by 0.1 px on the right and the bottom (float rounding): clipped.
    {"area": 193.0, "iscrowd": 0, "image_id": 42, "bbox": [30.5, 10, 9.6, 20.1], "category_id": 18, "id": 501},
    {"area": 100.0, "iscrowd": 0, "image_id": 73, "bbox": [0, 0, 10, 25], "category_id": 17, "id": 600},
  ],
  "categories": [
    {"supercategory": "animal", "id": 17, "name": "cat"},
    {"supercategory": "animal", "id": 18, "name": "dog"},
  ],
}


def _ref(ref_id, ann_id, image_id, split, *sents):
  return {
    "sent_ids": list(range(len(sents))),
    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
    "ann_id": ann_id,
    "ref_id": ref_id,
    "image_id": image_id,
    "split": split,
    "sentences": [{"tokens": s.split(), "raw": s.capitalize(), "sent_id": i, "sent": s} for i, s in enumerate(sents)],
    "category_id": 18,
  }


REFS = [
  _ref(0, 500, 42, "train", "left dog", "brown dog on the left"),
  _ref(1, 501, 42, "train", "right dog"),
  _ref(2, 600, 73, "testB", "cat"),
]
# Hand-computed: bbox [x, y, w, h] -> [y, x, y + h, x + w], then / (height, width).
LEFT_DOG = (3 / 30, 4 / 40, 18 / 30, 24 / 40)  # [3, 4, 18, 24] in the 40 x 30 image
RIGHT_DOG = (10 / 30, 30.5 / 40, 1.0, 1.0)  # [10, 30.5, 30.1 -> 30, 40.1 -> 40]
CAT = (0.0, 0.0, 0.5, 0.5)  # [0, 0, 25, 10] in the 20 x 50 image


def _refcoco_files(tmp_path, refs=REFS, instances=INSTANCES, as_json=False):
  images = _images(tmp_path / "train2014", "COCO_train2014_{:012d}.jpg")
  inst = (
    _write(tmp_path / "refcoco/instances.json", instances)
    if (tmp_path / "refcoco").mkdir(exist_ok=True) is None
    else None
  )
  if as_json:
    return _write(tmp_path / "refcoco/refs.json", refs), inst, images
  path = tmp_path / "refcoco/refs(unc).p"
  with open(path, "wb") as f:
    pickle.dump(refs, f, protocol=2)  # the toolkit's files are Python 2 pickles
  return path, inst, images


@pytest.mark.parametrize("as_json", [False, True], ids=["pickle", "json"])
def test_refcoco_refer_questions(tmp_path, as_json):
  refs, inst, images = _refcoco_files(tmp_path, as_json=as_json)
  out = tmp_path / "refcoco.jsonl"
  summary = formats.convert("refcoco", annotations=[refs], instances=inst, images=[images], out=out)
  assert summary["images"] == {"test": 1, "train": 1}
  first = json.loads(out.read_text().splitlines()[0])
  assert first == {
    "image": "train2014/COCO_train2014_000000000042.jpg",
    "refer": [
      {"expression": "left dog", "box": [3.0, 4.0, 18.0, 24.0]},
      {"expression": "brown dog on the left", "box": [3.0, 4.0, 18.0, 24.0]},
      {"expression": "right dog", "box": [10.0, 30.5, 30.0, 40.0]},
    ],
    "split": "train",
  }
  parsed = manifest_lib.parse_manifest(out)
  (dogs,), (cat,) = parsed["train"], parsed["test"]
  assert [e for e, _ in dogs.refers] == ["left dog", "brown dog on the left", "right dog"]
  for (_, got), want in zip(dogs.refers + cat.refers, [LEFT_DOG, LEFT_DOG, RIGHT_DOG, CAT]):
    assert got == pytest.approx(want, abs=1e-12)
  assert dogs.objects == []  # referring data only: no "detect" question over a partial annotation
  questions = manifest_lib.refer_questions(dogs.refers)
  assert [q for q, _, _ in questions] == ["detect left dog", "detect brown dog on the left", "detect right dog"]
  assert {t for _, _, t in questions} == {"refer"}


def test_refcoco_split_map(tmp_path):
  refs, inst, images = _refcoco_files(tmp_path)
  out = tmp_path / "refcoco.jsonl"
  summary = formats.convert(
    "refcoco", annotations=[refs], instances=inst, images=[images], split_map={"testB": None}, out=out
  )
  assert summary["images"] == {"train": 1}  # testB dropped: the test split is testA alone (none here)
  summary = formats.convert(
    "refcoco", annotations=[refs], instances=inst, images=[images], split_map={"testB": "validation"}, out=out
  )
  assert summary["images"] == {"train": 1, "validation": 1}


# ----------------------------------------------------------------------------------------------- errors


def _drop(obj, key, index, field):
  del obj[key][index][field]


def _image_5(d):
  """Question 73000 and its annotation about an image without a file."""
  d["questions"]["questions"][2]["image_id"] = d["annotations"]["annotations"][2]["image_id"] = 5


ERRORS = [  # (id, format, the change to the official files, the file the error names, its text)
  (
    "captions-no-image-entry",
    "coco_captions",
    lambda d: d["captions"]["annotations"][1].update(image_id=7),
    "captions",
    'annotations[1] (id 2): image_id 7 has no entry in "images"',
  ),
  (
    "captions-missing-caption",
    "coco_captions",
    lambda d: _drop(d["captions"], "annotations", 2, "caption"),
    "captions",
    "annotations[2] (id 3): missing key 'caption'",
  ),
  (
    "captions-empty-caption",
    "coco_captions",
    lambda d: d["captions"]["annotations"][0].update(caption=" "),
    "captions",
    "key 'caption' must be a non-empty string",
  ),
  (
    "captions-image-missing",
    "coco_captions",
    lambda d: d["captions"]["images"][0].update(file_name="gone.jpg"),
    "captions",
    "images[0] (id 42): image file not found",
  ),
  (
    "captions-duplicate-image",
    "coco_captions",
    lambda d: d["captions"]["images"][2].update(id=42),
    "captions",
    "images[2] (id 42): image id 42 is listed twice (also images[0])",
  ),
  (
    "captions-layout",
    "coco_captions",
    lambda d: d["captions"].pop("annotations"),
    "captions",
    'expected a JSON object with a "annotations" list',
  ),
  (
    "vqa-no-annotation",
    "vqav2",
    lambda d: d["annotations"]["annotations"].pop(1),
    "questions",
    "questions[1] (question_id 42001): no annotation",
  ),
  (
    "vqa-no-question",
    "vqav2",
    lambda d: d["questions"]["questions"].pop(2),
    "annotations",
    "annotations[2] (question_id 73000): no question",
  ),
  (
    "vqa-other-image",
    "vqav2",
    lambda d: d["annotations"]["annotations"][0].update(image_id=73),
    "annotations",
    "annotations[0] (question_id 42000): image_id 73 but its question",
  ),
  (
    "vqa-one-answer",
    "vqav2",
    lambda d: d["annotations"]["annotations"][2].update(answers=_humans("1")),
    "annotations",
    "holds 1 answers",
  ),
  (
    "vqa-answer-not-text",
    "vqav2",
    lambda d: d["annotations"]["annotations"][0]["answers"][3].update(answer=3),
    "annotations",
    "answers[3] must be an object with a string",
  ),
  ("vqa-no-image-file", "vqav2", _image_5, "questions", "questions[2] (question_id 73000): image_id 5 has no image in"),
  (
    "vqa-id-not-int",
    "vqav2",
    lambda d: d["questions"]["questions"][0].update(image_id="42"),
    "questions",
    "key 'image_id' must be an integer id",
  ),
  (
    "refcoco-zero-width",
    "refcoco",
    lambda d: d["instances"]["annotations"][1].update(bbox=[30, 10, 0, 5]),
    "instances",
    "annotations[1] (id 501): bbox [30, 10, 0, 5] has w <= 0 or h <= 0",
  ),
  (
    "refcoco-bbox-outside",
    "refcoco",
    lambda d: d["instances"]["annotations"][1].update(bbox=[50, 10, 5, 5]),
    "instances",
    "lies outside its 40 x 30 image",
  ),
  (
    "refcoco-bbox-3",
    "refcoco",
    lambda d: d["instances"]["annotations"][0].update(bbox=[1, 2, 3]),
    "instances",
    "must be 4 finite numbers",
  ),
  (
    "refcoco-no-ann",
    "refcoco",
    lambda d: d["refs"][1].update(ann_id=999),
    "refs",
    "refs[1] (ref_id 1): ann_id 999 has no annotation",
  ),
  (
    "refcoco-ann-elsewhere",
    "refcoco",
    lambda d: d["refs"][2].update(image_id=42),
    "refs",
    "refs[2] (ref_id 2): image_id 42 but its annotation",
  ),
  (
    "refcoco-two-splits",
    "refcoco",
    lambda d: d["refs"][1].update(split="val"),
    "refs",
    "refs[1] (ref_id 1): image 42 is in split 'validation' here but in 'train' for refs[0] (ref_id 0)",
  ),
  (
    "refcoco-unknown-split",
    "refcoco",
    lambda d: d["refs"][0].update(split="dev"),
    "refs",
    "split 'dev' is not one of train, val, test, testA, testB",
  ),
  (
    "refcoco-semicolon",
    "refcoco",
    lambda d: d["refs"][0]["sentences"][1].update(sent="dog ; cat"),
    "refs",
    "refs[0] (ref_id 0): sentences[1]: expression 'dog ; cat' must not contain",
  ),
  (
    "refcoco-no-sent",
    "refcoco",
    lambda d: d["refs"][0]["sentences"][0].pop("sent"),
    "refs",
    "sentences[0]: missing key 'sent'",
  ),
  (
    "refcoco-no-size",
    "refcoco",
    lambda d: d["instances"]["images"][1].pop("height"),
    "instances",
    "images[1] (id 73): missing key 'height'",
  ),
]


@pytest.mark.parametrize("fmt,mutate,named,text", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_name_file_and_record_and_write_nothing(tmp_path, fmt, mutate, named, text):
  out = tmp_path / "out/manifest.jsonl"
  out.parent.mkdir()
  out.write_text("previous\n")
  data = {
    "captions": copy.deepcopy(CAPTIONS),
    "questions": copy.deepcopy(VQA_QUESTIONS),
    "annotations": copy.deepcopy(VQA_ANNOTATIONS),
    "refs": copy.deepcopy(REFS),
    "instances": copy.deepcopy(INSTANCES),
  }
  mutate(data)
  if fmt == "coco_captions":
    files = {"captions": _write(tmp_path / "captions_val2017.json", data["captions"])}
    images = _images(tmp_path / "val2017", "{:012d}.jpg")
    run = lambda: formats.convert(fmt, annotations=[files["captions"]], images=[images], out=out)
  elif fmt == "vqav2":
    q, a, images = _vqa_files(tmp_path, data["questions"], data["annotations"])
    files = {"questions": q, "annotations": a}
    run = lambda: formats.convert(fmt, questions=[q], annotations=[a], images=[images], out=out)
  else:
    refs, inst, images = _refcoco_files(tmp_path, data["refs"], data["instances"])
    files = {"refs": refs, "instances": inst}
    run = lambda: formats.convert(fmt, annotations=[refs], instances=inst, images=[images], out=out)
  with pytest.raises(ValueError) as e:
    run()
  msg = str(e.value)
  assert msg.startswith(f"{files[named]}: ") and text in msg, msg
  assert "\n" not in msg
  assert out.read_text() == "previous\n" and os.listdir(out.parent) == ["manifest.jsonl"]  # nothing written


def test_input_errors(tmp_path):
  images = _images(tmp_path / "imgs", "{:012d}.jpg")
  ann = _write(tmp_path / "c.json", CAPTIONS)
  out = tmp_path / "m.jsonl"
  for kwargs, text in [
    (dict(annotations=[ann], images=[tmp_path / "nowhere"]), "image folder not found"),
    (dict(annotations=[ann], images=[images], splits=["dev"]), "split 'dev' is not one of train, validation, test"),
    (dict(annotations=[ann, ann], images=[images], splits=["train", "test", "test"]), "one per annotations file (2)"),
    (dict(annotations=[tmp_path / "none.json"], images=[images]), "none.json: cannot read"),
    (dict(annotations=[_write(tmp_path / "bad.json", [])], images=[images]), "bad.json: expected a JSON object"),
  ]:
    with pytest.raises(ValueError, match=re.escape(text)):
      formats.convert("coco_captions", out=out, **kwargs)
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(ValueError, match="broken.json: not a valid JSON file"):
    formats.convert("coco_captions", annotations=[tmp_path / "broken.json"], images=[images], out=out)
  with pytest.raises(ValueError, match="one questions file per annotations file"):
    formats.convert("vqav2", annotations=[ann], images=[images], out=out)
  with pytest.raises(ValueError, match="not a refs pickle or JSON list"):
    formats.convert("refcoco", annotations=[tmp_path / "broken.json"], instances=ann, images=[images], out=out)
  assert not out.exists()


def test_convert_dataset_command(tmp_path):
  refs, inst, images = _refcoco_files(tmp_path)
  out = tmp_path / "refcoco.jsonl"
  script = os.path.join(ROOT, "experiments", "convert_dataset.py")
  args = [sys.executable, script, "--format=refcoco", f"--annotations={refs}", f"--instances={inst}"]
  r = subprocess.run(
    args + [f"--images={images}", f"--out={out}", "--split_map=testB:"], capture_output=True, text=True
  )
  assert r.returncode == 0, r.stderr
  assert r.stdout.strip() == f"wrote {out}: 1 lines, images per split: train 1"
  r = subprocess.run(
    args + [f"--images={tmp_path}/nowhere", f"--out={tmp_path}/x.jsonl"], capture_output=True, text=True
  )
  assert (
    r.returncode == 2
    and r.stderr.strip() == f"error: {tmp_path}/nowhere: image folder not found. (--debug shows the traceback)"
  )
