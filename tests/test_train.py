"""End to end on CPU: train -> checkpoint -> resume -> evaluate -> sample, and config errors."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.checkpoint import CheckpointMismatch
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_train_checkpoint_resume_sample(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 4
  tiny_config.sample_examples = 1000  # the sample report holds every test prediction
  final = trainer.train_and_evaluate(tiny_config, wd, progress=False)
  rows = read_metrics(wd)
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert any("validation/vqa_accuracy" in r for r in rows) and any("test/cider" in r for r in rows)
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert os.path.exists(os.path.join(wd, "samples", "test_samples.png"))
  assert os.path.exists(os.path.join(wd, workdir_lib.TOKENIZER_FILENAME))
  first = workdir_lib.load(wd)
  assert first.step == 4
  # The test metrics against an independent scoring of the predictions in the sample report: it
  # lists the whole test split, and exact match / pycocoevalcap's CIDEr-D over it give the same numbers.
  report = report_rows(os.path.join(wd, "samples", "test_samples.txt"))
  assert sorted(r["example_id"] for r in report) == list(range(len(first.data.split("test"))))
  assert final == pytest.approx(independent_scores(report, "test"), rel=1e-6, abs=1e-12)

  # Same workdir, more steps: resumes from step 4 instead of starting over.
  tiny_config.total_steps = 6
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  rows = read_metrics(wd)
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
  second = workdir_lib.load(wd)
  assert second.step == 6
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(first.params), _leaves(second.params)))

  # The sample command answers a question about an image file.
  image = tmp_path / "scene.png"
  from PIL import Image

  Image.fromarray(second.data.image("test", 0)).save(image)
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "sample.py"),
      f"--workdir={wd}",
      f"--image={image}",
      "--prompt=what shape is the red object?",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  # One answer line for one image (an untrained model may answer with EOS only: an empty line).
  assert len(out.stdout.splitlines()) == 1, out.stdout
  # An empty prompt is a clear error.
  bad = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "sample.py"),
      f"--workdir={wd}",
      f"--image={image}",
      "--prompt= ",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "prompt 0 is empty" in bad.stderr

  # The spatial probe reads the trained model's answer position (tiny's train split has 48
  # spatial questions) and prints its three probes with accuracies in [0, 1].
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "proj", "shapes", "probe_spatial.py"),
      f"--workdir={wd}",
      "--split=train",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  # The labels of the questions from their text: which side the question asks about, and its answer.
  train = second.data.split("train")
  spatial = [e for e in range(len(train)) if second.data.qtype_name(int(train.qtype[e])) == "spatial"]
  asks_low = np.array([train.prompt_text(e).rstrip("?").split()[-1] in ("left", "top") for e in spatial])
  yes = np.array([train.references(e) == "yes" for e in spatial])
  assert lines[0].startswith(f"{len(spatial)} spatial questions of train") and len(lines) == 4, out.stdout
  # Each probe's majority rate is that of the held-out last third of the questions.
  held = slice(len(spatial) * 2 // 3, None)
  majority = lambda y: max(y[held].mean(), 1 - y[held].mean())
  assert [line.split()[-1] for line in lines[2:]] == [f"({majority(asks_low):.3f})", f"({majority(yes):.3f})"]

  # The token probe: one line per module of the image encoder; its labels are the parser's objects
  # of the first 12 train scenes, so the held-out third's majority rates follow from them.
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "proj", "shapes", "probe_tokens.py"),
      f"--workdir={wd}",
      "--split=train",
      "--max_images=12",
    ],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  from mmjax.projects.shapes.parse import parse_image

  firsts = {}
  for e in range(len(train)):
    firsts.setdefault(int(train.index[e, 0]), e)
  scenes = [train.image_of(e) for e in list(firsts.values())[:12]]
  objects = [o for image in scenes for o in parse_image(np.asarray(image)) if o.shape is not None]
  rate = lambda labels: (
    max(labels[len(labels) * 2 // 3 :].count(v) for v in set(labels)) / (len(labels) - len(labels) * 2 // 3)
  )
  lines = out.stdout.splitlines()
  assert lines[0].startswith(f"{len(objects)} objects in 12 images of train"), out.stdout
  # Each module's line ends with its two majority rates in brackets (colour, then shape).
  rows = {line.split()[0]: re.findall(r"\(([01]\.\d{3})\)", line) for line in lines[2:]}
  assert {"image_encoder", "image_encoder/patch_embed", "image_encoder/norm"} <= set(rows), out.stdout
  colours, shapes = rate([o.color for o in objects]), rate([o.shape for o in objects])
  assert all(r == [f"{colours:.3f}", f"{shapes:.3f}"] for r in rows.values()), out.stdout


def report_rows(path):
  """The predictions of a sample report (mmjax.sample.report's text: `[id] (qtype) prompt`, then the model's
  text and the references joined by ` | `)."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  pattern = r"^\[(\d+)\] \((\w+)\) (.*)\n  model:     (.*)\n  reference: (.*)$"
  return [
    dict(example_id=int(i), qtype=q, prompt=p, prediction=m, references=r.split(" | "))
    for i, q, p, m, r in re.findall(pattern, text, flags=re.M)
  ]


def _normalize(s):
  """Lowercase, apostrophes dropped, other punctuation a word break (the documented VQA normalisation)."""
  s = s.lower().replace("'", "").replace("\u2019", "")
  return " ".join("".join(c if c.isalnum() or c.isspace() else " " for c in s).split())


def independent_scores(report, split):
  """VQA exact match (overall and per question type), yes/no accuracy and the reference CIDEr-D and BLEU-4
  (pycocoevalcap) of report rows, named as the trainer names its metrics."""
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider

  hit = lambda r: float(_normalize(r["prediction"]) == _normalize(r["references"][0]))
  vqa = [r for r in report if r["qtype"] not in ("caption", "av_match")]
  out = {}
  if vqa:
    out[f"{split}/vqa_accuracy"] = np.mean([hit(r) for r in vqa])
    for qtype in {r["qtype"] for r in vqa}:
      out[f"{split}/vqa_accuracy_{qtype}"] = np.mean([hit(r) for r in vqa if r["qtype"] == qtype])
  av = [r for r in report if r["qtype"] == "av_match"]
  if av:
    out[f"{split}/av_match_accuracy"] = np.mean([hit(r) for r in av])
  caps = [r for r in report if r["qtype"] == "caption"]
  if caps:  # pycocoevalcap takes tokenised text: the normalised words joined by spaces
    refs = {i: [_normalize(x) for x in r["references"]] for i, r in enumerate(caps)}
    cands = {i: [_normalize(r["prediction"])] for i, r in enumerate(caps)}
    out[f"{split}/cider"] = Cider().compute_score(refs, cands)[0]
    out[f"{split}/bleu4"] = Bleu(4).compute_score(refs, cands, verbose=0)[0][3]
  return {k: float(v) for k, v in out.items()}


def test_checkpoint_of_another_model_is_refused(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 1
  tiny_config.eval_max_examples = 8
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  tiny_config.total_steps = 2
  tiny_config.model.decoder.depth = 2
  with pytest.raises(CheckpointMismatch, match=r"model.decoder.depth: checkpoint 1 vs now 2"):
    trainer.train_and_evaluate(tiny_config, wd, progress=False)


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("total_steps", 0, "total_steps"),
    ("batch_size", -8, "batch_size"),
  ],
)
def test_bad_config_values(tiny_config, tmp_path, key, value, match):
  tiny_config[key] = value
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"), progress=False)


def test_unknown_config_key_on_command_line(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "experiments", "train.py"),
      f"--workdir={tmp_path}",
      f"--config={os.path.join(CONFIGS, 'tiny.py')}",
      "--config.no_such_key=3",
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode != 0 and "no_such_key" in out.stderr
