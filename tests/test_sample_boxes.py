"""Boxes on images (mmjax.sample.boxes_image): exact outline pixels, labels and borders; the sample
report's boxes on grounding predictions; and the pieces of `sample.py --task=detect`."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mmjax.location_tokens import LocationTokens, box_markup
from mmjax.sample import boxes_image
from mmjax.sample.boxes_image import PALETTE, REFERENCE_COLORS, draw_boxes
from mmjax.sample.report import write_report
from tests.conftest import ROOT

BLACK = (0, 0, 0)


def _px(canvas, y, x):
  return tuple(int(v) for v in np.asarray(canvas)[y, x])


def test_outline_is_on_the_box_edges_of_the_upscaled_image():
  # A 10 x 20 image upscaled 3x is 30 x 60. The box covers pixel rows [2, 6) and columns [5, 15) of
  # the image, so canvas rows [6, 18) and columns [15, 45): the outline is rows 6 and 17, columns 15 and 44.
  image = np.zeros((10, 20, 3), np.uint8)
  canvas = draw_boxes(image, [("", (0.2, 0.25, 0.6, 0.75))], scale=3, width=1)
  assert canvas.size == (60, 30)
  a = np.asarray(canvas)
  red = np.array(PALETTE[0])
  for y in (6, 17):
    assert (a[y, 15:45] == red).all() and (a[y, 14] == 0).all() and (a[y, 45] == 0).all()
  for x in (15, 44):
    assert (a[6:18, x] == red).all() and (a[5, x] == 0).all() and (a[18, x] == 0).all()
  assert (a[7:17, 16:44] == 0).all()  # inside: untouched
  # Everything but the outline is the black image.
  outline = np.zeros((30, 60), bool)
  outline[6:18, 15:45] = True
  outline[7:17, 16:44] = False
  assert (a[~outline] == 0).all()


def test_width_grows_inward_and_colours_cycle():
  image = np.zeros((8, 8, 3), np.uint8)
  boxes = [("", (0.0, 0.0, 0.5, 0.5)), ("", (0.5, 0.5, 1.0, 1.0))]
  a = np.asarray(draw_boxes(image, boxes, scale=4, width=2))
  # Box 1: canvas [0, 16) x [0, 16); box 2: [16, 32) x [16, 32), each 2 pixels thick inward.
  assert _px(a, 0, 5) == _px(a, 1, 5) == PALETTE[0] and _px(a, 2, 5) == BLACK
  assert _px(a, 16, 20) == _px(a, 17, 20) == PALETTE[1] and _px(a, 15, 20) == BLACK
  assert _px(a, 31, 31) == PALETTE[1] and _px(a, 20, 30) == PALETTE[1] and _px(a, 20, 29) == BLACK
  assert PALETTE[0] != PALETTE[1]
  # Neighbours differ all around the palette.
  assert all(PALETTE[i] != PALETTE[(i + 1) % len(PALETTE)] for i in range(len(PALETTE)))


def test_boxes_on_the_image_border_stay_on_the_canvas():
  image = np.zeros((16, 16, 3), np.uint8)
  canvas = draw_boxes(image, [("a label too long to fit above, below or beside " * 5, (0.0, 0.0, 1.0, 1.0))], scale=2)
  assert canvas.size == (32, 32)
  a = np.asarray(canvas)
  # The whole border is drawn: the last row and column are the box's bottom and right edges.
  for y, x in [(0, 0), (31, 31), (0, 31), (31, 0), (31, 16), (16, 31)]:
    assert _px(a, y, x) == PALETTE[0], (y, x)
  # A zero-area box (a point: equal bins) is one pixel, drawn.
  a = np.asarray(draw_boxes(image, [("", (0.5, 0.5, 0.5, 0.5))], scale=2, width=1))
  assert _px(a, 16, 16) == PALETTE[0] and (a.reshape(-1, 3).any(axis=1).sum() == 1)
  # Coordinates past the edges (not from parse, but a drawing function takes any) are clipped.
  a = np.asarray(draw_boxes(image, [("", (-0.5, 0.9, 1.5, 1.5))], scale=1, width=1))
  assert _px(a, 0, 15) == PALETTE[0] and _px(a, 15, 14) == PALETTE[0]


def test_labels_empty_long_and_placed_next_to_the_box():
  image = np.zeros((32, 32, 3), np.uint8)
  box = (0.5, 0.25, 0.75, 0.5)
  plain = np.asarray(draw_boxes(image, [("", box)], scale=4, width=1))
  for label in ("circle", "x" * 500, "  spaced\n out  ", "ünïcödé"):
    a = np.asarray(draw_boxes(image, [(label, box)], scale=4, width=1))
    assert a.shape == (128, 128, 3)
    # The label sits above the box (canvas rows < 64) on the box's colour; the outline is untouched.
    diff = (a != plain).any(axis=2)
    assert diff.any() and not diff[64:].any(), label
    assert (a[64, 32:64] == PALETTE[0]).all()
  # No room above: the label goes below the box.
  a = np.asarray(draw_boxes(image, [("top", (0.0, 0.0, 0.25, 0.25))], scale=4, width=1))
  assert (a[32:48] != 0).any() and not (a[48:] != 0).any()


def test_references_are_dashed_over_the_predictions():
  image = np.zeros((16, 16, 3), np.uint8)
  box = (0.25, 0.25, 0.75, 0.75)  # canvas [16, 48) at scale 4
  a = np.asarray(draw_boxes(image, [("", box)], scale=4, references=[("ref", box)], width=1))
  top = [tuple(int(v) for v in p) for p in a[16, 16:48]]
  # Dashes alternate the reference colours, and the prediction shows in the gaps.
  assert set(top) == {PALETTE[0], *REFERENCE_COLORS}
  assert top[0] == REFERENCE_COLORS[0]
  # A reference alone: dashes with the image in the gaps, no label.
  a = np.asarray(draw_boxes(image, [], scale=4, references=[("ref", box)], width=1))
  assert {tuple(int(v) for v in p) for p in a[16, 16:48]} == {BLACK, *REFERENCE_COLORS}
  assert not a[:16].any()


def test_grounded_pairs_per_task():
  from mmjax.data.tasks import grounded_pairs

  loc = LocationTokens(num_bins=10, first_id=100)
  det = "<loc0001><loc0002><loc0003><loc0004> circle ; <loc0005><loc0005><loc0009><loc0009> square"
  assert [label for label, _ in grounded_pairs("detect", det, loc)] == ["circle", "square"]
  assert grounded_pairs("refer", "<loc0001><loc0002><loc0003><loc0004>", loc) == [("", (0.15, 0.25, 0.35, 0.45))]
  cap = f"<phrase>a red circle</phrase>{box_markup((0.1, 0.2, 0.3, 0.4))} at the top left"
  assert grounded_pairs("grounded_caption", cap, loc) == [("a red circle", (0.1, 0.2, 0.3, 0.4))]
  assert grounded_pairs("grounded_vqa", cap, loc) == [("a red circle", (0.1, 0.2, 0.3, 0.4))]
  assert grounded_pairs("vqa", det, loc) is None


class _Tokenizer:
  def __init__(self, locations):
    self.locations = locations


class _Data:
  """The two things write_report reads of a pipeline.Data: image(split, id) and tokenizer.locations."""

  def __init__(self, images, locations):
    self.images = images
    self.tokenizer = _Tokenizer(locations)

  def image(self, split, example_id):
    return self.images[example_id]


def _prediction(example_id, task, prompt, prediction, reference):
  return dict(
    example_id=example_id, task=task, qtype=task, prompt=prompt, prediction=prediction, references=[reference]
  )


def test_write_report_draws_grounding_boxes(tmp_path):
  loc = LocationTokens(num_bins=16, first_id=100)
  images = [np.zeros((16, 16, 3), np.uint8) for _ in range(3)]
  preds = [
    # Bins [2, 4, 10, 12] decode to bin centres (b + 0.5) / 16; on the 48-pixel cell (16 px at scale 3)
    # an edge is at floor((b + 0.5) * 3 + 0.5) = 3b + 2: rows [8, 32) and columns [14, 38), so the
    # outline is rows 8 and 31, columns 14 and 37.
    _prediction(0, "detect", "detect circle", loc.text([2, 4, 10, 12]) + " circle", box_markup((0.75, 0, 1, 0.25))),
    _prediction(1, "vqa", "what shape?", "circle", "circle"),
    _prediction(
      2,
      "grounded_caption",
      "describe the image.",
      "<phrase>a circle</phrase>" + loc.text([2, 4, 10, 12]) + " at the top",
      "<phrase>a circle</phrase>" + box_markup((0.75, 0.5, 1.0, 1.0)) + " at the top",
    ),
  ]
  png, txt = write_report(str(tmp_path), _Data(images, loc), "test", preds, n=3, columns=4, scale=3)
  a = np.asarray(Image.open(png).convert("RGB"))
  colour = np.array(PALETTE[0])
  for cell_x in (0, 2 * 48):  # cells 0 (detect) and 2 (grounded caption)
    for y in (8, 31):
      assert (a[y, cell_x + 14 : cell_x + 38] == colour).all(), (cell_x, y)
    for x in (14, 37):
      assert (a[8:32, cell_x + x] == colour).all(), (cell_x, x)
    assert (a[9:31, cell_x + 15 : cell_x + 37] == 0).all()
  # The reference of cell 0 is dashed at rows [36, 48), columns [0, 12) (exact markup at scale 3): its
  # bottom row (the top one is under the label, which has no room above the box) has white dashes.
  assert (a[47, 0:12] == REFERENCE_COLORS[0]).all(axis=1).any()
  # Cell 2's reference: rows [36, 48), columns [24, 48).
  assert (a[47, 96 + 24 : 96 + 48] == REFERENCE_COLORS[0]).all(axis=1).any()
  # The VQA cell is its image alone.
  assert (a[:48, 48:96] == 0).all()
  # The text under the cells stays.
  assert "circle" in open(txt).read()
  assert (a[48:] != 255).any()


def test_write_report_without_location_tokens_draws_no_boxes(tmp_path):
  images = [np.zeros((8, 8, 3), np.uint8)]
  preds = [_prediction(0, "detect", "detect circle", "<loc0001><loc0001><loc0002><loc0002> circle", "")]
  png, _ = write_report(str(tmp_path), _Data(images, None), "test", preds, n=1, columns=1, scale=2)
  assert (np.asarray(Image.open(png).convert("RGB"))[:16] == 0).all()
  # A data object without a tokenizer at all (old callers' stand-ins) still writes the report.

  class Bare:
    def image(self, split, example_id):
      return images[example_id]

  write_report(str(tmp_path), Bare(), "test", preds, n=1)


def test_refer_boxes_are_named_after_the_expression(tmp_path):
  loc = LocationTokens(num_bins=16, first_id=100)
  pred = _prediction(0, "refer", "detect the red circle", loc.text([2, 4, 10, 12]), box_markup((0, 0, 0.5, 0.5)))
  from mmjax.sample.report import prediction_boxes

  predicted, reference = prediction_boxes(pred, loc)
  assert [label for label, _ in predicted] == ["the red circle"] and reference == [("the red circle", (0, 0, 0.5, 0.5))]


def test_detection_prompt():
  assert boxes_image.detection_prompt("red circle") == ("detect red circle", ["red circle"])
  assert boxes_image.detection_prompt(" circle ;square ") == ("detect circle ; square", ["circle", "square"])
  assert boxes_image.detection_prompt("detect circle ; square") == ("detect circle ; square", ["circle", "square"])
  assert boxes_image.detection_prompt("detect the red circle") == ("detect the red circle", ["the red circle"])
  for bad in ("", "  ", " ; ", "detect  ;"):
    with pytest.raises(ValueError, match="--prompt"):
      boxes_image.detection_prompt(bad)


def test_box_lines_in_pixels_of_a_non_square_original():
  loc = LocationTokens(num_bins=64, first_id=1000)
  # The model saw a square; the original is 640 wide and 480 high. Bins [8, 16, 40, 48] of 64 decode to
  # (b + 0.5) / 64: y0 = 8.5/64 -> 63.75 -> 64 px of 480, x0 = 16.5/64 -> 165 px of 640, y1 = 40.5/64 ->
  # 303.75 -> 304, x1 = 48.5/64 -> 485.
  text = loc.text([8, 16, 40, 48]) + " red circle ; " + loc.text([0, 0, 63, 63])
  found = boxes_image.named(loc.parse(text), ["red circle"])
  lines = boxes_image.box_lines(found, height=480, width=640)
  assert lines == [
    "red circle: [0.133, 0.258, 0.633, 0.758] = pixels [64, 165, 304, 485] ([y0, x0, y1, x1] of 640x480)",
    "red circle: [0.008, 0.008, 0.992, 0.992] = pixels [4, 5, 476, 635] ([y0, x0, y1, x1] of 640x480)",
  ]
  # Several labels: a box without one stays unnamed.
  assert boxes_image.box_lines(boxes_image.named([("", (0, 0, 1, 1))], ["a", "b"]), 10, 20) == [
    "(no label): [0.000, 0.000, 1.000, 1.000] = pixels [0, 0, 10, 20] ([y0, x0, y1, x1] of 20x10)"
  ]


def test_original_image_drawing_and_paths(tmp_path):
  from mmjax.sample.predict import load_image

  path = tmp_path / "scene.final.png"
  rgba = np.zeros((30, 50, 4), np.uint8)
  rgba[..., 3] = 255
  rgba[:, :10, 3] = 0  # transparent: white, as the model's input
  Image.fromarray(rgba, "RGBA").save(path)
  original = load_image(str(path), None)
  assert original.shape == (30, 50, 3) and (original[:, :10] == 255).all() and (original[:, 10:] == 0).all()
  assert boxes_image.boxes_path(str(path)) == str(tmp_path / "scene.final_boxes.png")
  assert boxes_image.drawn_scale(30, 50) == 8 and boxes_image.drawn_scale(480, 640) == 1
  canvas = draw_boxes(original, [("x", (0.0, 0.2, 1.0, 1.0))], boxes_image.drawn_scale(30, 50))
  assert canvas.size == (400, 240)
  with pytest.raises(FileNotFoundError, match="--image"):
    load_image(str(tmp_path / "missing.png"), None)
  (tmp_path / "bad.png").write_text("not an image")
  with pytest.raises(ValueError, match="bad.png"):
    load_image(str(tmp_path / "bad.png"), None)


def test_check_detect_config_names_location_bins():
  from mmjax import config_files
  from tests.conftest import CONFIGS

  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  with pytest.raises(ValueError, match=r"config\.data\.location_bins is 0"):
    boxes_image.check_detect_config(c)
  c.data.location_bins = 16
  boxes_image.check_detect_config(c)


def _sample(*flags):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "sample.py"), *flags],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
  )


def test_sample_detect_flag_errors(tmp_path):
  """The detect path's usage errors, all before a model is loaded (a workdir with its config.json only)."""
  from mmjax import config_files
  from tests.conftest import CONFIGS

  wd = tmp_path / "wd"
  wd.mkdir()
  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  (wd / "config.json").write_text(c.to_json_best_effort(indent=2))
  image = tmp_path / "x.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)

  r = _sample(f"--workdir={wd}", "--task=detect", f"--image={image}", "--prompt=red circle")
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert "config.data.location_bins is 0" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
  r = _sample(f"--workdir={wd}", "--task=detect", "--split=test")
  assert r.returncode != 0 and "--task=detect goes with --image" in r.stderr.strip().splitlines()[-1]
  r = _sample(f"--workdir={wd}", "--task=detect", f"--image={image}")
  assert r.returncode != 0 and "--prompt" in r.stderr.strip().splitlines()[-1]
  r = _sample(f"--workdir={wd}", f"--image={image}", "--prompt=what?", "--out=o.png")
  assert r.returncode != 0 and "--out goes with --task=detect" in r.stderr.strip().splitlines()[-1]
  # With location tokens, a prompt naming nothing fails before the model is loaded (there is none here).
  c.data.location_bins = 16
  (wd / "config.json").write_text(c.to_json_best_effort(indent=2))
  r = _sample(f"--workdir={wd}", "--task=detect", f"--image={image}", "--prompt= ; ")
  assert r.returncode == 2 and "names nothing to detect" in r.stderr, r.stderr[-2000:]
  assert json.loads((wd / "config.json").read_text())["data"]["location_bins"] == 16


@pytest.mark.slow
def test_sample_detect_end_to_end(tiny_config, tmp_path):
  """A tiny model with location tokens, trained for 2 steps: sample.py --task=detect prints the boxes
  of its output in pixels of a non-square image file and draws them on that file's own pixels."""
  import re

  from mmjax.train import trainer

  wd = str(tmp_path / "run")
  tiny_config.data.location_bins = 16
  tiny_config.data.shapes.grounding_per_type = {"refer": 1, "detect": 1, "grounded_caption": 0, "grounded_vqa": 0}
  tiny_config.total_steps = 2
  tiny_config.eval_every = 2
  tiny_config.checkpoint_every = 2
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  assert os.path.exists(os.path.join(wd, "samples", "test_samples.png"))
  # The evaluator ranks each detection by the model's probability of it (grounding.box_confidences):
  # a generate_fn that always draws one box, with log-probs that differ by row and position, so a
  # row or a column out of place gives other confidences.
  import jax

  from mmjax.evaluate.evaluator import evaluate_split
  from mmjax.train import workdir as workdir_lib

  t = workdir_lib.load(wd)
  tok = t.data.tokenizer
  ids = [tok.locations.first_id + b for b in (1, 2, 5, 6)] + tok.encode(" circle") + [tok.eos_id]
  logp = lambda rows: -0.01 * np.arange(1, 9)[None] * (1 + np.arange(rows) % 3)[:, None]

  def fake_generate(params, images, prompt, prompt_len, rng):
    return np.array([ids + [tok.pad_id] * (8 - len(ids))] * len(prompt_len))

  fake_generate.token_logprobs = lambda params, images, prompt, prompt_len, tokens: logp(len(tokens))
  metrics, preds = evaluate_split(t.data, "test", fake_generate, t.params, 4, jax.random.key(0))
  detect = [(i % 4, p) for i, p in enumerate(preds) if p["task"] == "detect"]
  assert detect and np.isfinite(metrics["test/detect_map50"])
  for row, p in detect:
    assert p["box_scores"] == pytest.approx([np.exp(logp(row + 1)[row, :5].sum())], rel=1e-9), p
  assert all("box_scores" not in p for p in preds if p["task"] != "detect")

  image = tmp_path / "scene.png"
  original = np.zeros((30, 50, 3), np.uint8)
  original[5:15, 10:30] = (255, 0, 0)
  Image.fromarray(original).save(image)
  r = _sample(f"--workdir={wd}", "--task=detect", f"--image={image}", "--prompt=red circle ; square")
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  head = f"{image}: detect red circle ; square -> "
  assert lines[0].startswith(head) and lines[-1] == f"wrote {tmp_path / 'scene_boxes.png'} (8x the image's size)"
  # The printed boxes are those of the printed output (an untrained model's: maybe none).
  text = lines[0][len(head) :]
  expected = boxes_image.box_lines(LocationTokens(16, 0).parse(text), 30, 50) or ["no boxes in the output"]
  assert [line.strip() for line in lines[1:-1]] == expected
  assert all(re.search(r"of 50x30\)$", line) for line in lines[1:-1] if line.strip() != "no boxes in the output")
  drawn = Image.open(tmp_path / "scene_boxes.png")
  assert drawn.size == (400, 240)
  # The image file's own pixels upscaled 8x (not the model's square copy), with the boxes (if any) on them.
  a = np.asarray(drawn.convert("RGB"))
  upscaled = np.asarray(Image.fromarray(original).resize((400, 240), Image.Resampling.NEAREST))
  if expected == ["no boxes in the output"]:
    assert (a == upscaled).all()
  else:
    assert (a != upscaled).any() and (a == upscaled).all(axis=2).mean() > 0.5


def test_report_spreads_its_examples_over_tasks():
  from mmjax.sample.report import spread_over_tasks

  preds = [{"task": t, "example_id": i} for i, t in enumerate(["vqa"] * 5 + ["refer"] * 2 + ["detect"] * 3)]
  assert [p["example_id"] for p in spread_over_tasks(preds, 6)] == [0, 5, 7, 1, 6, 8]
  assert [p["example_id"] for p in spread_over_tasks(preds, 100)] == [0, 5, 7, 1, 6, 8, 2, 9, 3, 4]
  assert spread_over_tasks(preds, 0) == [] and spread_over_tasks([], 3) == []
