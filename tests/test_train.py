"""End to end on CPU: train -> checkpoint -> resume -> evaluate -> sample, and config errors."""
import json
import os
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
  final = trainer.train_and_evaluate(tiny_config, wd, progress=False)
  for key in ("test/vqa_accuracy", "test/vqa_accuracy_attribute", "test/vqa_accuracy_spatial",
              "test/vqa_accuracy_relational", "test/cider"):
    assert key in final and 0.0 <= final[key] <= (10.0 if key.endswith("cider") else 1.0)
  rows = read_metrics(wd)
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert any("validation/vqa_accuracy" in r for r in rows) and any("test/cider" in r for r in rows)
  assert os.listdir(os.path.join(wd, "tensorboard"))
  assert os.path.exists(os.path.join(wd, "samples", "test_samples.png"))
  assert os.path.exists(os.path.join(wd, workdir_lib.TOKENIZER_FILENAME))
  first = workdir_lib.load(wd)
  assert first.step == 4

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
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "sample.py"), f"--workdir={wd}",
                        f"--image={image}", "--prompt=what shape is the red object?"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  # One answer line for one image (an untrained model may answer with EOS only: an empty line).
  assert len(out.stdout.splitlines()) == 1, out.stdout
  # An empty prompt is a clear error.
  bad = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "sample.py"), f"--workdir={wd}",
                        f"--image={image}", "--prompt= "], capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "prompt 0 is empty" in bad.stderr

  # The spatial probe reads the trained model's answer position (tiny's train split has 48
  # spatial questions) and prints its three probes with accuracies in [0, 1].
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "proj", "shapes", "probe_spatial.py"), f"--workdir={wd}",
                        "--split=train"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  probes = [line.split()[-2:] for line in out.stdout.splitlines()[1:]]
  assert len(probes) == 3 and all(0.0 <= float(a) <= 1.0 and 0.5 <= float(b.strip("()")) <= 1.0 for a, b in probes)


def test_checkpoint_of_another_model_is_refused(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.total_steps = 1
  tiny_config.eval_max_examples = 8
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  tiny_config.total_steps = 2
  tiny_config.model.decoder.depth = 2
  with pytest.raises(CheckpointMismatch, match=r"model.decoder.depth: checkpoint 1 vs now 2"):
    trainer.train_and_evaluate(tiny_config, wd, progress=False)


@pytest.mark.parametrize("key,value,match", [
    ("total_steps", 0, "total_steps"),
    ("batch_size", -8, "batch_size"),
])
def test_bad_config_values(tiny_config, tmp_path, key, value, match):
  tiny_config[key] = value
  with pytest.raises(ValueError, match=match):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"), progress=False)


def test_unknown_config_key_on_command_line(tmp_path):
  out = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--workdir={tmp_path}",
                        f"--config={os.path.join(CONFIGS, 'tiny.py')}", "--config.no_such_key=3"],
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "no_such_key" in out.stderr
