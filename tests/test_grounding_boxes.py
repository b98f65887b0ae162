"""Boxes and location tokens (mmjax.data.boxes): validation messages, quantisation checked against
exact rational arithmetic, token ids, "<locNNNN>" text and parsing of well-formed and malformed
detection output."""

import random
from fractions import Fraction

import numpy as np
import pytest

from mmjax.data.boxes import normalize_box
from mmjax.location_tokens import LocationTokens, bins_to_box, box_to_bins

BIN_COUNTS = [1, 2, 7, 32, 100, 1000, 1024]


def _random_boxes(rng, n):
  ys, xs = np.sort(rng.random((n, 2)), axis=1), np.sort(rng.random((n, 2)), axis=1)
  return np.stack([ys[:, 0], xs[:, 0], ys[:, 1], xs[:, 1]], axis=1)


# ---------------------------------------------------------------------------------- quantisation


@pytest.mark.parametrize("num_bins", BIN_COUNTS)
def test_round_trip_within_half_a_bin(num_bins):
  rng = np.random.default_rng(num_bins)
  boxes = _random_boxes(rng, 500)
  boxes[:5] = [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1], [0.5, 0.25, 0.75, 1.0], [0, 1, 0, 1]]
  bins = box_to_bins(boxes, num_bins)
  assert bins.shape == (500, 4) and np.issubdtype(bins.dtype, np.integer)
  assert bins.min() >= 0 and bins.max() <= num_bins - 1
  # Independent reference: bin i is the one whose interval [i/N, (i+1)/N) holds the exact value of
  # the float, or N-1 for 1.0.
  for c, b in zip(boxes.reshape(-1)[:400], bins.reshape(-1)[:400]):
    exact = Fraction(float(c))
    if exact == 1:
      assert b == num_bins - 1
    else:
      assert Fraction(int(b), num_bins) <= exact < Fraction(int(b) + 1, num_bins), (c, b)
  decoded = bins_to_box(bins, num_bins)
  assert np.max(np.abs(decoded - boxes)) <= 1 / (2 * num_bins) + 1e-9
  # Quantisation preserves the order of the corners.
  assert np.all(bins[:, 2] >= bins[:, 0]) and np.all(bins[:, 3] >= bins[:, 1])


@pytest.mark.parametrize("num_bins", BIN_COUNTS)
def test_edges_go_to_the_first_and_last_bin(num_bins):
  assert box_to_bins([0.0, 0.0, 1.0, 1.0], num_bins).tolist() == [0, 0, num_bins - 1, num_bins - 1]
  lo, hi = 0.5 / num_bins, (num_bins - 0.5) / num_bins
  assert bins_to_box(np.array([0, 0, num_bins - 1, num_bins - 1]), num_bins).tolist() == [lo, lo, hi, hi]


def test_hand_computed_bins():
  assert box_to_bins([0.25, 0.5, 0.75, 1.0], 4).tolist() == [1, 2, 3, 3]
  assert box_to_bins([0.05, 0.1, 0.55, 0.99], 10).tolist() == [0, 1, 5, 9]
  assert box_to_bins([0.0, 0.4999, 0.5, 0.999], 1024).tolist() == [0, 511, 512, 1022]
  assert box_to_bins([0.0, 0.3, 0.7, 1.0], 1).tolist() == [0, 0, 0, 0]
  assert box_to_bins([0.0, 0.49, 0.5, 1.0], 2).tolist() == [0, 0, 1, 1]
  assert bins_to_box(np.array([0, 1, 2, 3]), 4).tolist() == [0.125, 0.375, 0.625, 0.875]
  assert bins_to_box(np.array([0, 0, 0, 0]), 1).tolist() == [0.5] * 4


def test_quantisation_is_vectorised():
  boxes = _random_boxes(np.random.default_rng(0), 6).reshape(2, 3, 4)
  bins = box_to_bins(boxes, 32)
  assert bins.shape == (2, 3, 4)
  assert bins[1, 2].tolist() == box_to_bins(boxes[1, 2], 32).tolist()
  assert bins_to_box(bins, 32).shape == (2, 3, 4)


@pytest.mark.parametrize(
  "call",
  [
    lambda: box_to_bins([0, 0, 1, 1.01], 8),
    lambda: box_to_bins([-0.1, 0, 1, 1], 8),
    lambda: box_to_bins([0, 0, float("nan"), 1], 8),
    lambda: box_to_bins([0, 0, 1], 8),
    lambda: box_to_bins([0, 0, 1, 1], 0),
    lambda: box_to_bins([0, 0, 1, 1], 2.0),
    lambda: bins_to_box(np.array([0, 0, 8, 1]), 8),
    lambda: bins_to_box(np.array([0, -1, 1, 1]), 8),
    lambda: bins_to_box(np.array([0.0, 0.0, 1.0, 1.0]), 8),
    lambda: bins_to_box(np.array([0, 0, 1]), 8),
  ],
)
def test_quantisation_rejects_bad_input(call):
  with pytest.raises(ValueError):
    call()


# ------------------------------------------------------------------------------- normalize_box


def test_normalize_box_pixels_and_normalised():
  assert normalize_box([30, 40, 90, 160], image_size=(120, 160)) == (0.25, 0.25, 0.75, 1.0)
  assert normalize_box((0, 0, 120, 160), image_size=(120, 160)) == (0.0, 0.0, 1.0, 1.0)
  assert normalize_box([0.1, 0.2, 0.3, 0.4]) == (0.1, 0.2, 0.3, 0.4)
  assert normalize_box(np.array([0, 0, 1, 1])) == (0.0, 0.0, 1.0, 1.0)
  out = normalize_box(np.array([3, 4, 6, 8], dtype=np.int32), image_size=(6, 8))
  assert out == (0.5, 0.5, 1.0, 1.0) and all(type(v) is float for v in out)


WHERE = "manifest.jsonl line 7"


@pytest.mark.parametrize(
  "box, image_size, expected",
  [
    ([0.1, 0.2, 0.3], None, "must be 4 numbers [y0, x0, y1, x1], got 3 values"),
    ([0.1, 0.2, 0.3, 0.4, 0.5], None, "got 5 values"),
    ("0 0 1 1", None, "must be 4 numbers"),
    (0.5, None, "must be 4 numbers"),
    ([0.1, "a", 0.3, 0.4], None, "must be 4 numbers"),
    ([0.1, None, 0.3, 0.4], None, "must be 4 numbers"),
    ([0.1, True, 0.3, 0.4], None, "must be 4 numbers"),
    ([0.1, 0.2, float("nan"), 0.4], None, "non-finite coordinate y1 = nan"),
    ([0.1, float("inf"), 0.3, 0.4], None, "non-finite coordinate x0 = inf"),
    ([0.5, 0.2, 0.3, 0.4], None, "y1 < y0 (0.3 < 0.5)"),
    ([0.1, 0.6, 0.3, 0.4], None, "x1 < x0 (0.4 < 0.6)"),
    ([0.1, 0.2, 1.5, 0.4], None, "y1 = 1.5 outside the image (normalised coordinates must be in [0, 1])"),
    ([-0.1, 0.2, 0.3, 0.4], None, "y0 = -0.1 outside the image"),
    ([0.1, 0.2, 0.3, 1.0001], None, "x1 = 1.0001 outside the image"),
    ([10, 20, 130, 40], (120, 160), "y1 = 130 outside the image (pixel coordinates must be in [0, height 120]"),
    ([10, 20, 100, 161], (120, 160), "x1 = 161 outside the image"),
    ([10, -2, 100, 40], (120, 160), "x0 = -2 outside the image"),
    ([0.2, 0.2, 0.2, 0.4], None, "zero height (y0 = y1 = 0.2); zero-area boxes are rejected"),
    ([10, 30, 20, 30], (120, 160), "zero width (x0 = x1 = 30)"),
    ([10, 30, 20, 40], (120, 0), "image_size must be (height, width)"),
    ([10, 30, 20, 40], (120,), "image_size must be (height, width)"),
  ],
)
def test_bad_box_messages_name_where_and_are_one_line(box, image_size, expected):
  with pytest.raises(ValueError) as info:
    normalize_box(box, image_size=image_size, where=WHERE)
  msg = str(info.value)
  assert msg.startswith(f"{WHERE}: "), msg
  assert expected in msg, msg
  assert "\n" not in msg
  with pytest.raises(ValueError) as info:
    normalize_box(box, image_size=image_size)
  assert expected in str(info.value) and not str(info.value).startswith(":")


def test_bad_box_message_stays_one_line_for_big_input():
  with pytest.raises(ValueError) as info:
    normalize_box(np.zeros((100, 4)), where=WHERE)
  msg = str(info.value)
  assert msg.startswith(WHERE) and "\n" not in msg and len(msg) < 300


# ----------------------------------------------------------------------------- location tokens


def test_location_ids_follow_the_vocabulary():
  vocab_size = 32000
  loc = LocationTokens.for_vocab(vocab_size, 1024)
  assert (loc.first_id, loc.num_bins, loc.stop) == (32000, 1024, 33024)
  assert loc.ids == range(32000, 33024)
  loc.check_vocab(vocab_size)
  assert not loc.is_location(0) and not loc.is_location(31999)
  assert loc.is_location(32000) and loc.is_location(33023) and not loc.is_location(33024)
  assert loc.is_location(np.array([5, 32000, 33024, 32500])).tolist() == [False, True, False, True]
  rng = np.random.default_rng(1)
  for box in _random_boxes(rng, 200):
    ids = loc.token_ids(box)
    assert len(ids) == 4 and all(isinstance(i, int) and vocab_size <= i < vocab_size + 1024 for i in ids)
    assert np.max(np.abs(np.array(loc.box(ids)) - box)) <= 1 / 2048 + 1e-9
  assert loc.token_ids([0, 0, 1, 1]) == [32000, 32000, 33023, 33023]
  assert loc.box([32000, 32000, 33023, 33023]) == (0.5 / 1024, 0.5 / 1024, 1023.5 / 1024, 1023.5 / 1024)


def test_location_id_errors():
  with pytest.raises(ValueError, match="collide"):
    LocationTokens(num_bins=1024, first_id=100).check_vocab(32000)
  LocationTokens(num_bins=1024, first_id=32000).check_vocab(32000)
  loc = LocationTokens.for_vocab(10, 8)
  for bad in ([10, 11, 12], [10, 11, 12, 9], [10, 11, 12, 18], [10, 11, 12, 12.0]):
    with pytest.raises(ValueError):
      loc.box(bad)
  for bad in (dict(num_bins=0, first_id=0), dict(num_bins=8, first_id=-1), dict(num_bins=8.0, first_id=0)):
    with pytest.raises(ValueError):
      LocationTokens(**bad)
  with pytest.raises(ValueError):
    LocationTokens.for_vocab(-1, 8)
  with pytest.raises(ValueError):
    loc.token_ids([0, 0, 1.5, 1])
  with pytest.raises(dataclass_frozen_error()):
    loc.num_bins = 4


def dataclass_frozen_error():
  import dataclasses

  return dataclasses.FrozenInstanceError


def test_location_text():
  loc = LocationTokens.for_vocab(257152, 1024)
  assert loc.text(0) == "<loc0000>"
  assert loc.text(1023) == "<loc1023>"
  assert loc.text(np.int64(12)) == "<loc0012>"
  assert loc.text([12, 5, 1000, 0]) == "<loc0012><loc0005><loc1000><loc0000>"
  assert loc.text(np.array([1, 2])) == "<loc0001><loc0002>"
  assert loc.box_text([0.0, 0.25, 0.5, 1.0]) == "<loc0000><loc0256><loc0512><loc1023>"
  assert LocationTokens.for_vocab(0, 10).text(3) == "<loc0003>"  # at least 4 digits
  assert LocationTokens.for_vocab(0, 10000).text(7) == "<loc0007>"  # 9999 has 4 digits
  assert LocationTokens.for_vocab(0, 10001).text(7) == "<loc00007>"  # 10000 has 5
  for bad in (1024, -1, 1.0, [1, 1024]):
    with pytest.raises(ValueError):
      loc.text(bad)


# ----------------------------------------------------------------------------------------- parse

LOC = LocationTokens.for_vocab(1000, 1024)


def _centres(*bins):
  return tuple((b + 0.5) / 1024 for b in bins)


def test_parse_well_formed_detection_output():
  text = "<loc0010><loc0020><loc0500><loc0600> big dog ; <loc0100><loc0000><loc1023><loc0200> cat"
  assert LOC.parse(text) == [("big dog", _centres(10, 20, 500, 600)), ("cat", _centres(100, 0, 1023, 200))]
  rng = np.random.default_rng(2)
  boxes = _random_boxes(rng, 5)
  labels = ["dog", "a cat", "ball", "the left one", "x"]
  text = " ; ".join(LOC.box_text(b) + " " + l for b, l in zip(boxes, labels))
  parsed = LOC.parse(text)
  assert [l for l, _ in parsed] == labels
  for (_, got), want in zip(parsed, boxes):
    assert np.max(np.abs(np.array(got) - want)) <= 1 / 2048 + 1e-9


A = "<loc0010><loc0020><loc0500><loc0600>"
B = "<loc0100><loc0100><loc0200><loc0200>"
BOX_A, BOX_B = _centres(10, 20, 500, 600), _centres(100, 100, 200, 200)


@pytest.mark.parametrize(
  "text, expected",
  [
    ("", []),
    ("no objects here", []),
    (A, [("", BOX_A)]),  # a box alone (referring output)
    (f"{A} dog", [("dog", BOX_A)]),
    (f"  {A}   big \t dog  ", [("big dog", BOX_A)]),
    (f"{A} dog ; ", [("dog", BOX_A)]),
    (f"{A} dog;{B} cat;", [("dog", BOX_A), ("cat", BOX_B)]),
    (f"{A} dog {B} cat", [("dog", BOX_A), ("cat", BOX_B)]),  # separator missing
    ("<loc0010> <loc0020>\n<loc0500> <loc0600> dog", [("dog", BOX_A)]),
    ("<loc0010><loc0020><loc0500> dog", []),  # 3 tokens
    (f"<loc0010><loc0020><loc0500> dog ; {B} cat", [("cat", BOX_B)]),
    (f"<loc0001>{A} dog ; {B} cat", [("cat", BOX_B)]),  # 5 tokens
    (f"{A}{B} dog", []),  # 8 tokens
    (f"{A} dog <loc0001><loc0002> ; {B} cat", [("dog", BOX_A), ("cat", BOX_B)]),  # trailing fragment
    ("<loc0010><loc0020><loc1024><loc0600> dog", []),  # bin out of range
    ("<loc0500><loc0020><loc0010><loc0600> dog", []),  # y1 < y0
    ("<loc0010><loc0600><loc0500><loc0020> dog", []),  # x1 < x0
    ("<loc0007><loc0007><loc0007><loc0007> dot", [("dot", _centres(7, 7, 7, 7))]),  # one bin: zero area
    ("<loc10><loc20><loc500><loc600> dog", [("dog", BOX_A)]),  # unpadded
    ("<loc0010><loc0020><loc0500><loc06 dog", []),
    ("<loc-001><loc0020><loc0500><loc0600> dog", []),
    ("prefix text " + A + " dog", [("dog", BOX_A)]),
    (None, []),
    (b"<loc0010>", []),
  ],
)
def test_parse_malformed(text, expected):
  assert LOC.parse(text) == expected


def test_parse_never_raises_on_garbage():
  pieces = ["<loc0010>", "<loc1023>", "<loc9999>", "<loc>", "<loc12", "loc0001>", " ; ", ";", " dog", "cat "]
  pieces += ["  ", "<", ">"]
  pieces += ["\n", "<loc0000>", "<loc0500>", "<loc00100>", "\u00e9", "<loc\u0663>"]
  rng = random.Random(0)
  for _ in range(3000):
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 20)))
    for label, box in LOC.parse(text):
      assert isinstance(label, str) and len(box) == 4
      assert all(0 <= c <= 1 for c in box) and box[0] <= box[2] and box[1] <= box[3]


# ------------------------------------------------------------------------------ markup in dataset text

from mmjax.location_tokens import (  # noqa: E402
  box_markup,
  detect_prompt,
  detection_text,
  markup_box,
  phrase_text,
  strip_boxes,
)


def test_box_markup_is_exact_for_pixel_edges():
  rng = np.random.default_rng(7)
  for size in (32, 64, 100, 640, 4032):
    for _ in range(200):
      y0, y1 = sorted(rng.integers(0, size + 1, 2))
      x0, x1 = sorted(rng.integers(0, size + 1, 2))
      box = (y0 / size, x0 / size, y1 / size, x1 / size)
      text = box_markup(box)
      assert text.startswith("<box>") and text.endswith("</box>")
      assert markup_box(text[5:-6]) == box  # exact
  assert box_markup([0.0, 0.25, 0.5, 1.0]) == "<box>0.0 0.25 0.5 1.0</box>"


@pytest.mark.parametrize(
  "bad", [[0.1, 0.2, 0.3], [0.5, 0.0, 0.2, 1.0], [0.0, 0.6, 1.0, 0.5], [-0.1, 0, 1, 1], [0, 0, 1, 1.5]]
)
def test_box_markup_rejects_bad_boxes(bad):
  with pytest.raises(ValueError):
    box_markup(bad)


@pytest.mark.parametrize(
  "inner",
  ["0.1 0.2 0.3", "0.1 0.2 0.3 0.4 0.5", "a b c d", "0.5 0 0.2 1", "0 0.6 1 0.5", "-0.1 0 1 1", "0 0 1 nan", ""],
)
def test_markup_box_returns_none_for_non_boxes(inner):
  assert markup_box(inner) is None


def test_render_hand_computed():
  loc = LocationTokens.for_vocab(100, 4)
  # 0.25 * 4 = 1 -> bin 1; 0.5 -> 2; 0.75 -> 3; 1.0 (the edge) -> bin 3, not 4.
  assert loc.render("<box>0.25 0.5 0.75 1</box> dog") == "<loc0001><loc0002><loc0003><loc0003> dog"
  assert loc.render("no boxes here") == "no boxes here"
  text = "<phrase>a dog</phrase><box>0 0 0.2 0.3</box> on the left, <phrase>a cat</phrase><box>0.5 0.5 1 1</box>"
  assert loc.render(text) == (
    "<phrase>a dog</phrase><loc0000><loc0000><loc0000><loc0001> on the left, "
    "<phrase>a cat</phrase><loc0002><loc0002><loc0003><loc0003>"
  )


@pytest.mark.parametrize(
  "bad", ["<box>0.1 0.2 0.3</box>", "<box>0.5 0 0.2 1</box>", "<box>a b c d</box>", "<box>0 0 2 1</box>"]
)
def test_render_names_where_on_malformed_markup(bad):
  with pytest.raises(ValueError, match=r"^train record 'x7' question 2: .*is not a box"):
    LocationTokens.for_vocab(100, 64).render(f"{bad} dog", where="train record 'x7' question 2")


def test_render_then_parse_is_within_half_a_bin():
  rng = np.random.default_rng(3)
  for n in (1, 2, 7, 32, 64, 1000):
    loc = LocationTokens.for_vocab(300, n)
    boxes = np.array(sorted(map(tuple, _random_boxes(rng, 6))))  # raster order: detection_text's
    labels = [f"thing {i}" for i in range(6)]
    text = detection_text(list(zip(labels, [tuple(b) for b in boxes])), labels)
    exact = loc.parse(text)  # markup parses to the exact boxes
    assert [label for label, _ in exact] == labels
    np.testing.assert_array_equal(np.array([b for _, b in exact]), np.asarray(boxes, np.float64))
    rendered = loc.parse(loc.render(text))
    assert [label for label, _ in rendered] == labels
    assert np.max(np.abs(np.array([b for _, b in rendered]) - boxes)) <= 1 / (2 * n) + 1e-12


def test_detection_text_order_hand_written():
  objects = [
    ("square", (0.5, 0.1, 0.6, 0.2)),
    ("circle", (0.3, 0.7, 0.4, 0.8)),
    ("circle", (0.1, 0.9, 0.2, 1.0)),
    ("square", (0.2, 0.5, 0.3, 0.6)),
    ("circle", (0.1, 0.2, 0.2, 0.3)),
    ("star", (0.0, 0.0, 0.1, 0.1)),
  ]
  # Raster order over the kept objects, labels interleaved; the prompt's label order is irrelevant.
  expected = (
    "<box>0.1 0.2 0.2 0.3</box> circle ; <box>0.1 0.9 0.2 1.0</box> circle ; <box>0.2 0.5 0.3 0.6</box> square ; "
    "<box>0.3 0.7 0.4 0.8</box> circle ; <box>0.5 0.1 0.6 0.2</box> square"
  )
  assert detection_text(objects, ["circle", "square"]) == expected
  assert detection_text(objects, ["square", "circle"]) == expected
  assert detection_text(objects, ["square", "triangle"]) == (
    "<box>0.2 0.5 0.3 0.6</box> square ; <box>0.5 0.1 0.6 0.2</box> square"
  )
  assert detection_text(objects, ["triangle"]) == ""
  assert detection_text(objects[:2]) == "<box>0.3 0.7 0.4 0.8</box> circle ; <box>0.5 0.1 0.6 0.2</box> square"
  assert detection_text(objects[3:]) == (
    "<box>0.0 0.0 0.1 0.1</box> star ; <box>0.1 0.2 0.2 0.3</box> circle ; <box>0.2 0.5 0.3 0.6</box> square"
  )
  assert detect_prompt(["circle", "square"]) == "detect circle ; square"


def test_strip_boxes():
  assert strip_boxes("<phrase>a dog</phrase><box>0 0 1 1</box> on the left, <box>0 0 1 1</box>") == (
    "<phrase>a dog</phrase> on the left,"
  )
  assert strip_boxes("plain  text ") == "plain  text "  # untouched without boxes


def test_parse_reads_markup_and_tokens_alike():
  loc = LocationTokens.for_vocab(100, 4)
  tokens = "<loc0000><loc0001><loc0002><loc0003>"
  text = f"<box>0.1 0.2 0.3 0.4</box> dog ; {tokens} cat ; <box>0.1 0.2 0.3</box> bad ; <box>0.5 0 0.2 1</box> bad"
  assert loc.parse(text) == [("dog", (0.1, 0.2, 0.3, 0.4)), ("cat", (0.125, 0.375, 0.625, 0.875))]
  # A box in markup right after location tokens merges with them: neither is a box.
  assert loc.parse(f"{tokens}<box>0.1 0.2 0.3 0.4</box> dog") == []


@pytest.mark.parametrize(
  "text, expected",
  [
    ("", []),
    ("<phrase>a dog</phrase><loc0000><loc0001><loc0002><loc0003> runs", [("a dog", (0.125, 0.375, 0.625, 0.875))]),
    (
      "<phrase> a  big\tdog </phrase> <loc0000> <loc0001> <loc0002> <loc0003>",
      [("a big dog", (0.125, 0.375, 0.625, 0.875))],
    ),
    ("<phrase>a dog</phrase><box>0.1 0.2 0.3 0.4</box>", [("a dog", (0.1, 0.2, 0.3, 0.4))]),
    ("<phrase>a dog</phrase> runs <loc0000><loc0001><loc0002><loc0003>", []),  # box not right after
    ("<phrase>a dog</phrase><loc0000><loc0001><loc0002>", []),  # 3 tokens
    ("<phrase>a dog</phrase><loc0000><loc0001><loc0002><loc0003><loc0003>", []),  # 5 tokens
    ("<phrase>a dog</phrase><loc0003><loc0001><loc0002><loc0003>", []),  # y1 < y0
    ("<phrase>a dog</phrase><loc0000><loc0001><loc0002><loc0009>", []),  # bin out of range
    ("<phrase>a dog<loc0000><loc0001><loc0002><loc0003>", []),  # unclosed phrase
    (
      "<phrase>a</phrase><box>0 0 0.5 0.5</box>, <phrase>b</phrase>, <phrase>c</phrase><box>0.5 0.5 1 1</box>",
      [("a", (0.0, 0.0, 0.5, 0.5)), ("c", (0.5, 0.5, 1.0, 1.0))],
    ),
    (None, []),
  ],
)
def test_phrases(text, expected):
  assert LocationTokens.for_vocab(100, 4).phrases(text) == expected


def test_phrase_text_round_trip():
  loc = LocationTokens.for_vocab(100, 64)
  text = phrase_text("a dog", (0.125, 0.25, 0.5, 0.75)) + " on the left"
  assert text == "<phrase>a dog</phrase><box>0.125 0.25 0.5 0.75</box> on the left"
  assert loc.phrases(text) == [("a dog", (0.125, 0.25, 0.5, 0.75))]
  # Rendered, the box is the bins' centres: 0.125 * 64 = 8 -> (8 + 0.5) / 64.
  assert loc.phrases(loc.render(text)) == [("a dog", (8.5 / 64, 16.5 / 64, 32.5 / 64, 48.5 / 64))]
