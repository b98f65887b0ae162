"""Text-to-image on bring-your-own data: a JSONL manifest of generated images with captions trains the
t2i_flow kind end to end through the trainer (experiments/train.py's path). The manifest dataset has no
image scorer, so evaluation reports no t2i metrics (one logged note, no crash), and the sample report and
the evaluator's predictions carry the generated images."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from mmjax import config_files
from mmjax.data import pipeline
from mmjax.data.examples import TASK_CAPTION
from mmjax.evaluate import text_to_image as t2i_eval
from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
PLACES = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}
# Image i shows colour i % 4 at place i // 4. Held out: two (colour, place) pairs each for validation and test,
# every word of theirs still in the train captions (which the tokenizer is trained on).
HELD_OUT = {6: "validation", 9: "validation", 3: "test", 12: "test"}


def _write_data(d, phrase="a {colour} square in the {place}"):
  """16 images 48 x 48 (prepared at 32 x 32): a coloured square in one quadrant of a light background, each
  with its caption, split by HELD_OUT. The light background puts the
  images' mean far from 0 in model space ([-1, 1]), which the first steps learn: the loss falls clearly."""
  (d / "imgs").mkdir(parents=True)
  lines = []
  for i in range(16):
    colour, place = list(COLOURS)[i % 4], list(PLACES)[i // 4]
    img = np.full((48, 48, 3), 230, np.uint8)
    r, c = PLACES[place]
    img[r * 24 + 4 : r * 24 + 20, c * 24 + 4 : c * 24 + 20] = COLOURS[colour]
    Image.fromarray(img).save(d / f"imgs/{i:02d}.png")
    caption = phrase.format(colour=colour, place=place)
    lines.append({"image": f"imgs/{i:02d}.png", "caption": caption, "split": HELD_OUT.get(i, "train")})
  p = d / "manifest.jsonl"
  p.write_text("".join(json.dumps(l) + "\n" for l in lines))
  return p, lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny t2i config on the manifest, trained as experiments/train.py does (8 steps, validation at
  step 4, test at the end), recording the t2i evaluations and the warnings logged."""
  src = tmp_path_factory.mktemp("byo")
  manifest, lines = _write_data(src)
  c = config_files.load(os.path.join(CONFIGS, "t2i_flow.py"), "tiny")
  c.data.manifest = str(manifest)
  c.data.data_dir = str(tmp_path_factory.mktemp("data"))
  c.data.vocab_size = 300
  wd = str(tmp_path_factory.mktemp("t2i_byo") / "run")
  handler, evaluations = _Capture(), []
  real = t2i_eval.evaluate_split

  def recording(data, split, *args, **kwargs):
    metrics, preds = real(data, split, *args, **kwargs)
    evaluations.append((split, metrics, preds))
    return metrics, preds

  logging.getLogger().addHandler(handler)
  t2i_eval.evaluate_split = recording  # the evaluator made by the trainer calls it by its module name
  try:
    final = trainer.train_and_evaluate(c, wd, progress=False)
  finally:
    t2i_eval.evaluate_split = real
    logging.getLogger().removeHandler(handler)
  return dict(config=c, workdir=wd, final=final, lines=lines, warnings=handler.messages, evaluations=evaluations)


class _Capture(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def test_trains_on_the_captions_and_evaluates_without_a_scorer(trained):
  c, wd = trained["config"], trained["workdir"]
  t = workdir_lib.load(wd)
  # The manifest's captions are the captioning examples the kind trains on: one per train image.
  train = t.data.split("train")
  assert (train.task == TASK_CAPTION).sum() == 12 and len(train.task) == 12
  rows = read_metrics(wd)
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == c.total_steps and np.isfinite(losses).all(), losses
  # At init the DiT outputs 0 (loss E|eps - x0|^2, about 1.6 here); the first steps learn the mean.
  assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses
  # Validation at step 4 (its 2 captions) and test at the end (2), each generating images; no scorer, so
  # no t2i metrics anywhere, and the note that says so logged once for the run.
  evals = trained["evaluations"]
  assert [(split, len(preds)) for split, _, preds in evals] == [("validation", 2), ("test", 2)]
  assert all(metrics == {} for _, metrics, _ in evals) and trained["final"] == {}
  assert not any(k.startswith(("validation/", "test/")) for r in rows for k in r), rows
  notes = [m for m in trained["warnings"] if "defines no image_scorer" in m]
  assert len(notes) == 1, trained["warnings"]
  assert not any("truncated" in m for m in trained["warnings"]), trained["warnings"]  # whole captions


def test_report_and_predictions_hold_generated_images(trained):
  wd, lines = trained["workdir"], trained["lines"]
  ((_, _, preds),) = [e for e in trained["evaluations"] if e[0] == "test"]
  test_captions = [l["caption"] for l in lines if l["split"] == "test"]
  assert sorted(p["prompt"] for p in preds) == sorted(test_captions)
  t = workdir_lib.load(wd)
  for p in preds:
    assert p["image"].dtype == p["image_noguidance"].dtype == np.uint8
    assert p["image"].shape == p["image_noguidance"].shape == (32, 32, 3)
    assert p["prediction"] == "(not scored)" and p["references"] == [p["prompt"]]
    # Generated, not the dataset's image of the caption, and guidance (3) changed it.
    assert np.abs(p["image"].astype(int) - t.data.image("test", p["example_id"]).astype(int)).mean() > 5
    assert not np.array_equal(p["image"], p["image_noguidance"])
  report = open(os.path.join(wd, "samples", "test_samples.txt")).read()
  for caption in test_captions:
    assert f"(t2i) {caption}\n  model:     (not scored)\n  reference: {caption}" in report, report
  # The report's cells show the generated images (upscaled 3x, nearest), in prediction order.
  png = np.asarray(Image.open(os.path.join(wd, "samples", "test_samples.png")).convert("RGB"))
  for i, p in enumerate(preds):
    np.testing.assert_array_equal(png[: 32 * 3 : 3, i * 96 : i * 96 + 96 : 3], p["image"])


def test_another_manifest_gets_its_own_note(trained, tmp_path):
  """The trained model evaluated on a second, different manifest dataset (its own captions, the run's tokenizer)
  in the same process: its evaluator says again that this dataset has no scorer."""
  wd = trained["workdir"]
  t = workdir_lib.load(wd)
  manifest, _ = _write_data(tmp_path / "src", phrase="the {colour} square in the {place}")
  c = t.setup.config.copy_and_resolve_references()
  c.data.update(dict(manifest=str(manifest), data_dir=str(tmp_path / "data")))
  data = pipeline.Data(c, os.path.join(wd, "tokenizer.model"))
  assert data.builder.builder_config.name != t.data.builder.builder_config.name  # another dataset
  handler = _Capture()
  logging.getLogger().addHandler(handler)
  try:
    metrics, preds = t.setup.make_evaluator(data)(t.params, "test")
  finally:
    logging.getLogger().removeHandler(handler)
  assert metrics == {}
  want = ["the red square in the bottom right", "the yellow square in the top left"]  # HELD_OUT's test images
  assert sorted(p["prompt"] for p in preds) == want
  assert any("defines no image_scorer" in m for m in handler.messages), handler.messages
