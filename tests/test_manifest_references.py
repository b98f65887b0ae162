"""Manifest lines with human reference answers ("answers") and referring expressions ("refer"): what the
records and the prepared dataset hold, the examples the refer questions make, and the errors naming the line."""

import numpy as np
import pytest

from mmjax.data import config as config_lib, manifest as manifest_lib, prepare, schema, tfds_builders
from mmjax.data.examples import TASK_NAMES
from mmjax.evaluate.evaluator import score
from mmjax.location_tokens import LocationTokens
from tests.test_manifest_boxes import _write_images, _write_manifest

HUMANS = ["dog", "dog", "puppy", "a dog", "dog", "dog", "Dog", "dog", "dogs", "dog"]
LINES = [
  {"image": "imgs/wide.png", "question": "what is it?", "answer": "dog", "answers": HUMANS, "split": "train"},
  {"image": "imgs/wide.png", "question": "is it asleep?", "answer": "yes"},  # no human answers: exact match
  {"image": "imgs/wide.png", "boxes": [{"label": "cat", "box": [10, 20, 30, 60]}]},
  # wide.png is 40 x 80 (h x w): [4, 0, 20, 8] / (40, 80) = (0.1, 0, 0.5, 0.1).
  {"image": "imgs/wide.png", "refer": [{"expression": "the  small dog", "box": [4, 0, 20, 8]}] * 2},
  {
    "image": "imgs/square.png",
    "refer": [{"expression": "the ball", "box": [0.1, 0.2, 0.5, 0.9]}],
    "box_format": "normalized",
    "split": "train",
  },
]
SMALL_DOG, BALL = (0.1, 0.0, 0.5, 0.1), (0.1, 0.2, 0.5, 0.9)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  _write_images(src)
  m = _write_manifest(src, LINES)
  data_dir = tmp_path_factory.mktemp("data")
  return m, data_dir, tfds_builders.prepare_manifest(str(m), str(data_dir), image_size=16)


def test_records(prepared):
  m, _, _ = prepared
  square, wide = manifest_lib.parse_manifest(m)["train"]  # sorted by id
  assert wide.human_answers == [HUMANS, []]
  assert wide.refers == [("the small dog", SMALL_DOG)]  # whitespace-normalised, the repeated entry once
  assert square.refers == [("the ball", BALL)] and square.questions == []


def test_prepared_records_hold_answers_and_refer_questions(prepared):
  _, _, builder = prepared
  assert set(builder.info.features) == set(schema.record_features(16)) | set(tfds_builders.REFERENCE_ANSWER_FEATURES)
  src = builder.as_data_source("train")
  records = {r["id"]: r for r in (src[i] for i in range(len(src)))}
  wide, square = records[b"imgs/wide.png"], records[b"imgs/square.png"]
  # VQA questions, then the boxes' "detect" (one label: no label "refer"), then the expressions' "refer".
  assert [t.decode() for t in wide["question_types"]] == ["vqa", "vqa", "detect", "refer"]
  assert [q.decode() for q in wide["questions"]][2:] == ["detect cat", "detect the small dog"]
  assert wide["answers"][3].decode() == "<box>0.1 0.0 0.5 0.1</box>"  # the box alone
  assert tfds_builders.unpack_reference_answers(wide) == [HUMANS, [], [], []]
  assert tfds_builders.unpack_reference_answers(square) == [[]]
  assert [q.decode() for q in square["questions"]] == ["detect the ball"]


def test_refer_examples_and_their_score(prepared):
  m, data_dir, _ = prepared
  c = config_lib.default_data_config()
  c.update(dict(manifest=str(m), data_dir=str(data_dir), image_size=16, vocab_size=300, location_bins=16))
  data = prepare.load_split(c, "train")
  refer = [e for e in range(len(data)) if TASK_NAMES[data.task[e]] == "refer"]
  assert sorted(data.prompt_text(e) for e in refer) == ["detect the ball", "detect the small dog"]
  tok = data.tokenizer
  for e in refer:
    target = tok.decode(data.example(e, media=False)["target_out"])
    ((label, box),) = tok.locations.parse(target)
    want = SMALL_DOG if data.prompt_text(e) == "detect the small dog" else BALL
    assert label == "" and np.max(np.abs(np.subtract(box, want))) <= 0.5 / 16 + 1e-9
  # The reference (exact markup) is scored like any refer answer: a prediction of its bins is a hit.
  loc = LocationTokens.for_vocab(300, 16)
  ref = data.references(refer[0])
  m = score([dict(task="refer", qtype="refer", prompt="", prediction=loc.render(ref), references=[ref])], "t", loc)
  assert m["t/refer_acc50"] == 1.0


def test_manifest_without_answers_keeps_its_features(tmp_path):
  _write_images(tmp_path)
  m = _write_manifest(tmp_path, [LINES[1] | {"split": "train"}, LINES[3]])
  cfg = tfds_builders.manifest_config(m, image_size=16)
  assert not cfg.has_reference_answers and cfg.name.endswith("_s16_seed0")
  builder = tfds_builders.prepare_manifest(str(m), str(tmp_path / "data"), image_size=16)
  assert set(builder.info.features) == set(schema.record_features(16))


BAD = [
  ("answers-alone", {"image": "imgs/wide.png", "caption": "x", "answers": ["a", "b"]}, "without a question"),
  ("one-answer", dict(LINES[0], answers=["dog"]), "at least 2 strings"),
  ("answers-string", dict(LINES[0], answers="dog"), "got a str"),
  ("answer-number", dict(LINES[0], answers=["dog", 2]), "at least 2 strings"),
  ("refer-keys", {"image": "imgs/wide.png", "refer": [{"label": "a", "box": [0, 0, 1, 1]}]}, '"expression" and "box"'),
  ("refer-dict", {"image": "imgs/wide.png", "refer": {"expression": "a", "box": [0, 0, 1, 1]}}, "must be a list"),
  ("refer-semicolon", {"image": "imgs/wide.png", "refer": [{"expression": "a;b", "box": [0, 0, 1, 1]}]}, "contain"),
  ("refer-empty", {"image": "imgs/wide.png", "refer": [{"expression": " ", "box": [0, 0, 1, 1]}]}, "non-empty"),
  ("refer-outside", {"image": "imgs/wide.png", "refer": [{"expression": "a", "box": [0, 0, 41, 1]}]}, "refer[0]: box"),
  ("refer-empty-list", {"image": "imgs/wide.png", "refer": []}, "line has neither"),
]


@pytest.mark.parametrize("line,msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_lines_name_their_line(tmp_path, line, msg):
  _write_images(tmp_path)
  m = _write_manifest(tmp_path, LINES[:2] + [line])
  with pytest.raises(ValueError) as e:
    manifest_lib.parse_manifest(m)
  text = str(e.value)
  assert text.startswith(f"{m}:3: ") and msg in text, text
