"""Boxes in JSONL manifests (mmjax.data.manifest): pixel and normalised boxes become the records'
"detect" / "refer" questions, which parse back to the boxes computed by hand, become examples of the
grounding tasks, and bad boxes are rejected naming their manifest line before anything is written."""

import json

import numpy as np
import pytest
from PIL import Image

from mmjax.data import config as config_lib, manifest as manifest_lib, prepare, tfds_builders
from mmjax.data.examples import TASK_NAMES
from mmjax.location_tokens import LocationTokens

PARSER = LocationTokens.for_vocab(600, 64)
RED, WHITE = (255, 0, 0), (255, 255, 255)


def _write_images(d):
  """Non-square images; wide.png has a red rectangle exactly on its "cat" box (pixels)."""
  (d / "imgs").mkdir(parents=True)
  wide = np.full((40, 80, 3), 255, np.uint8)  # h 40, w 80
  wide[10:30, 20:60] = RED
  Image.fromarray(wide).save(d / "imgs/wide.png")
  Image.fromarray(np.full((50, 20, 3), 90, np.uint8)).save(d / "imgs/tall.png")  # h 50, w 20
  Image.fromarray(np.full((30, 30, 3), 160, np.uint8)).save(d / "imgs/square.png")


def _write_manifest(d, lines, name="manifest.jsonl"):
  p = d / name
  p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return p


WIDE_BOXES = [
  {"label": "cat", "box": [10, 20, 30, 60]},
  {"label": "dog", "box": [4, 0, 20, 8]},
  {"label": "dog", "box": [0, 40, 40, 80]},
]
GOOD_LINES = [
  {"image": "imgs/wide.png", "question": "what is it?", "answer": "a cat", "boxes": WIDE_BOXES, "split": "train"},
  # The same cat again (another line of the image): one object, not two.
  {"image": "imgs/wide.png", "caption": "a cat and dogs", "boxes": WIDE_BOXES[:1]},
  {
    "image": "imgs/tall.png",
    "boxes": [{"label": "tree", "box": [0, 0, 1, 0.5]}, {"label": " small  bird ", "box": [0.1, 0.2, 0.6, 0.9]}],
    "box_format": "normalized",
    "split": "train",
  },
  {"image": "imgs/square.png", "boxes": [{"label": "ball", "box": [3, 6, 15, 27]}], "split": "train"},
]

# Hand-computed normalised boxes: pixels / (h, w), wide.png (40, 80), square.png (30, 30).
CAT = (0.25, 0.25, 0.75, 0.75)  # [10, 20, 30, 60] / (40, 80)
DOG_SMALL = (0.1, 0.0, 0.5, 0.1)  # [4, 0, 20, 8] / (40, 80)
DOG_BIG = (0.0, 0.5, 1.0, 1.0)  # [0, 40, 40, 80] / (40, 80)
TREE, BIRD = (0.0, 0.0, 1.0, 0.5), (0.1, 0.2, 0.6, 0.9)  # given normalised
BALL = (0.1, 0.2, 0.5, 0.9)  # [3, 6, 15, 27] / (30, 30)

EXPECTED = {  # record -> [(question type, question, parsed answer)]
  "imgs/wide.png": [
    ("vqa", "what is it?", None),
    # Detection answers in raster order (top-left corners), whatever the labels.
    ("detect", "detect cat ; dog", [("dog", DOG_BIG), ("dog", DOG_SMALL), ("cat", CAT)]),
    ("refer", "detect cat", [("cat", CAT)]),
  ],
  "imgs/tall.png": [
    ("detect", "detect small bird ; tree", [("tree", TREE), ("small bird", BIRD)]),
    ("refer", "detect small bird", [("small bird", BIRD)]),
    ("refer", "detect tree", [("tree", TREE)]),
  ],
  # One label: its refer question would repeat the detect question, so only detect.
  "imgs/square.png": [("detect", "detect ball", [("ball", BALL)])],
}


def _same_objects(got, want):
  assert [label for label, _ in got] == [label for label, _ in want], (got, want)
  for (_, g), (_, w) in zip(got, want):
    assert g == pytest.approx(w, abs=1e-8), (got, want)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  _write_images(src)
  m = _write_manifest(src, GOOD_LINES)
  data_dir = tmp_path_factory.mktemp("data")
  return m, data_dir, tfds_builders.prepare_manifest(str(m), str(data_dir), image_size=32)


def _config(manifest, data_dir, location_bins):
  c = config_lib.default_data_config()
  c.update(dict(manifest=str(manifest), data_dir=str(data_dir), image_size=32, vocab_size=300))
  c.location_bins = location_bins
  return c


def test_records_carry_grounding_questions(prepared):
  _, _, builder = prepared
  assert tfds_builders.split_sizes(builder) == {"train": 3}
  assert builder.builder_config.question_types[0] == "vqa"
  assert {"refer", "detect"} <= set(builder.builder_config.question_types)
  src = builder.as_data_source("train")
  records = {r["id"].decode(): r for r in (src[i] for i in range(len(src)))}
  assert sorted(records) == sorted(EXPECTED)
  for rid, want in EXPECTED.items():
    r = records[rid]
    types, questions = [t.decode() for t in r["question_types"]], [q.decode() for q in r["questions"]]
    answers = [a.decode() for a in r["answers"]]
    assert types == [t for t, _, _ in want] and questions == [q for _, q, _ in want], rid
    for (_, _, objects), answer in zip(want, answers):
      if objects is not None:
        _same_objects(PARSER.parse(answer), objects)
  assert [a.decode() for a in records["imgs/wide.png"]["answers"]][0] == "a cat"
  assert [c.decode() for c in records["imgs/wide.png"]["captions"]] == ["a cat and dogs"]


def test_boxes_follow_the_square_resize(prepared):
  """The 40 x 80 image is stretched to 32 x 32 (no crop or pad): its red rectangle, the cat box, is
  at the cat's normalised box x 32 = rows and columns [8, 24) of the prepared image."""
  _, _, builder = prepared
  src = builder.as_data_source("train")
  image = next(src[i]["image"] for i in range(len(src)) if src[i]["id"] == b"imgs/wide.png")
  y0, x0, y1, x1 = (round(c * 32) for c in CAT)
  assert (y0, x0, y1, x1) == (8, 8, 24, 24)
  inside = image[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]  # a pixel's margin: bilinear blends the edges
  assert (inside == RED).all()
  outside = np.ones((32, 32), bool)
  outside[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = False
  assert (image[outside] == WHITE).all()


def test_grounding_examples_with_location_bins(prepared):
  m, data_dir, _ = prepared
  data = prepare.load_split(_config(m, data_dir, 64), "train")
  detect, refer = TASK_NAMES.index("detect"), TASK_NAMES.index("refer")
  assert int((data.task == detect).sum()) == 3 and int((data.task == refer).sum()) == 3
  assert int((data.task == TASK_NAMES.index("vqa")).sum()) == 1
  want = {(rid, q): (t, objects) for rid, items in EXPECTED.items() for t, q, objects in items if t != "vqa"}
  seen = set()
  tok = data.tokenizer
  for e in np.flatnonzero((data.task == detect) | (data.task == refer)):
    key = (data.record_id(e), data.prompt_text(e))
    seen.add(key)
    task, objects = want[key]
    assert TASK_NAMES[data.task[e]] == task and data.question_types[data.qtype[e]] == task
    # The target is location tokens now: decoded, they parse to bin centres within half a bin.
    out = tok.locations.parse(tok.decode(data.example(e, media=False)["target_out"]))
    assert [label for label, _ in out] == [label for label, _ in objects]
    for (_, g), (_, w) in zip(out, objects):
      assert np.max(np.abs(np.subtract(g, w))) <= 0.5 / 64 + 1e-9
  assert seen == set(want)


def test_grounding_examples_need_location_bins(prepared):
  m, data_dir, _ = prepared
  with pytest.raises(ValueError, match=r"config\.data\.location_bins"):
    prepare.load_split(_config(m, data_dir, 0), "train")


def test_pixels_are_never_guessed_from_values(tmp_path):
  """Small numbers are pixels unless the line says "normalized"; boxes of all lines of an image add up."""
  _write_images(tmp_path)
  m = _write_manifest(
    tmp_path,
    [
      {"image": "imgs/wide.png", "boxes": [{"label": "dot", "box": [0, 0, 1, 1]}] * 2},
      {"image": "imgs/wide.png", "boxes": [{"label": "all", "box": [0, 0, 1, 1]}], "box_format": "normalized"},
      {"image": "imgs/wide.png", "boxes": [], "caption": "no boxes on this line"},
      {"image": "imgs/wide.png", "boxes": [{"label": "dot", "box": [0, 0, 1, 1]}], "box_format": "pixels"},
    ],
  )
  (rec,) = manifest_lib.parse_manifest(m)["train"]
  assert rec.objects == [("dot", (0.0, 0.0, 1 / 40, 1 / 80)), ("all", (0.0, 0.0, 1.0, 1.0))]


def _box(b):
  return {"image": "imgs/wide.png", "boxes": [{"label": "cat", "box": b}]}


BAD = [
  ("outside-pixels", _box([0, 0, 41, 10]), "y1 = 41 outside the image"),
  ("outside-width", _box([0, 0, 10, 81]), "x1 = 81 outside the image"),
  ("outside-normalized", dict(_box([0, 0, 1.5, 1]), box_format="normalized"), "outside the image"),
  ("negative", _box([-1, 0, 10, 10]), "outside the image"),
  ("y1<y0", _box([30, 0, 10, 10]), "y1 < y0"),
  ("x1<x0", _box([0, 30, 10, 10]), "x1 < x0"),
  ("3-numbers", _box([1, 2, 3]), "got 3 values"),
  ("5-numbers", _box([1, 2, 3, 4, 5]), "got 5 values"),
  ("not-numbers", _box([0, "a", 10, 10]), "must be 4 numbers"),
  ("bool", _box([0, True, 10, 10]), "must be 4 numbers"),
  ("string-box", _box("0 0 10 10"), "got a str"),
  ("null-box", _box(None), "must be 4 numbers"),
  ("zero-height", _box([5, 0, 5, 10]), "zero height"),
  ("zero-width", _box([0, 5, 10, 5]), "zero width"),
  ("missing-label", {"image": "imgs/wide.png", "boxes": [{"box": [0, 0, 10, 10]}]}, 'exactly the keys "label"'),
  ("missing-box", {"image": "imgs/wide.png", "boxes": [{"label": "cat"}]}, 'exactly the keys "label"'),
  ("extra-key", {"image": "imgs/wide.png", "boxes": [dict(_box([0, 0, 1, 1])["boxes"][0], score=1)]}, "'score'"),
  ("object-not-dict", {"image": "imgs/wide.png", "boxes": [[0, 0, 10, 10]]}, "got a list"),
  ("empty-label", {"image": "imgs/wide.png", "boxes": [{"label": "  ", "box": [0, 0, 1, 1]}]}, "non-empty string"),
  ("number-label", {"image": "imgs/wide.png", "boxes": [{"label": 3, "box": [0, 0, 1, 1]}]}, "non-empty string"),
  ("semicolon-label", {"image": "imgs/wide.png", "boxes": [{"label": "a;b", "box": [0, 0, 1, 1]}]}, "must not contain"),
  ("boxes-dict", {"image": "imgs/wide.png", "boxes": {"label": "cat", "box": [0, 0, 1, 1]}}, "must be a list"),
  ("boxes-string", {"image": "imgs/wide.png", "boxes": "cat"}, "must be a list"),
  ("bad-format", dict(_box([0, 0, 1, 1]), box_format="pixel"), "not one of pixels, normalized"),
  ("format-alone", {"image": "imgs/wide.png", "caption": "x", "box_format": "normalized"}, 'without "boxes"'),
]


@pytest.mark.parametrize("line,msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_boxes_name_their_line(tmp_path, line, msg):
  _write_images(tmp_path)
  m = _write_manifest(tmp_path, GOOD_LINES[:2] + [line] + GOOD_LINES[2:])
  data_dir = tmp_path / "data"
  with pytest.raises(ValueError) as e:
    tfds_builders.prepare_manifest(str(m), str(data_dir))
  text = str(e.value)
  assert text.startswith(f"{m}:3: ") and msg in text, text
  assert "\n" not in text
  assert not data_dir.exists() or not any(data_dir.rglob("*"))


def test_empty_boxes_alone_are_not_a_line(tmp_path):
  _write_images(tmp_path)
  m = _write_manifest(tmp_path, GOOD_LINES[:2] + [{"image": "imgs/wide.png", "boxes": []}])
  with pytest.raises(ValueError, match=r"key 'question': line has neither") as e:
    manifest_lib.parse_manifest(m)
  assert str(e.value).startswith(f"{m}:3: ")


def test_manifest_without_boxes_keeps_its_dataset_name(tmp_path):
  """Boxes change nothing for a manifest without them: the name is still content hash, folder hash,
  size and seed only (so a dataset prepared before boxes existed is found again)."""
  _write_images(tmp_path)
  m = _write_manifest(tmp_path, [{"image": "imgs/wide.png", "caption": "a cat"}])
  cfg = tfds_builders.manifest_config(m, image_size=32)
  h = manifest_lib.manifest_hash(m)
  assert cfg.name.startswith(f"m{h}-") and cfg.name.endswith("_s32_seed0")
