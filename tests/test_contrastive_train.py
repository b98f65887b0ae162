"""The contrastive model kind through the one trainer: retrieval / zero-shot metric math against
hand-computed values, train -> metrics -> resume, the entry points on a contrastive workdir, the
loss going down, config errors, and kind="vlm" configs unchanged."""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import config_files
from mmjax.data import pipeline
from mmjax.data.examples import TASK_CAPTION
from mmjax.evaluate import retrieval
from mmjax.models import ContrastiveModel, VisionLanguageModel, build_model, model_class, vlm
from mmjax.projects.shapes import scenes as shapes
from mmjax.train import batches as batches_lib, state as state_lib, step as step_lib, trainer, workdir as workdir_lib
from mmjax.train.checkpoint import CheckpointMismatch, _check_compatible
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS, ROOT

RETRIEVAL_KEYS = [f"retrieval_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]


# ---- metric math ------------------------------------------------------------------------------


def test_match_ranks_count_ties_against_the_match():
  scores = np.array(
    [
      [0.9, 0.1, 0.5, 0.9],  # matches {0, 1}: best 0.9, tied by candidate 3 -> rank 1
      [0.2, 0.3, 0.1, 0.0],  # match {2}: 0.1, beaten by 0.2 and 0.3 -> rank 2
      [0.4, 0.4, 0.4, 0.4],
    ]
  )  # match {3}: everything ties -> rank 3 (not 0)
  matches = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], bool)
  ranks = retrieval.match_ranks(scores, matches)
  np.testing.assert_array_equal(ranks, [1, 2, 3])
  assert retrieval.recall_at_k(ranks, (1, 2, 3, 4)) == {1: 0.0, 2: 1 / 3, 3: 2 / 3, 4: 1.0}
  # The candidates' order does not matter (the ties are not broken by position).
  perm = np.array([3, 2, 1, 0])
  np.testing.assert_array_equal(retrieval.match_ranks(scores[:, perm], matches[:, perm]), ranks)
  # Two matches tying with each other cost nothing.
  np.testing.assert_array_equal(retrieval.match_ranks([[0.5, 0.5, 0.1]], [[True, True, False]]), [0])
  with pytest.raises(ValueError, match="no matching candidate"):
    retrieval.match_ranks([[0.1, 0.2]], [[False, False]])


def test_retrieval_ranks_both_directions():
  # 3 images (one-hot embeddings), 4 texts; texts 0 and 1 describe image 0, text 2 image 1, text 3 image 2.
  image_emb = np.eye(3, dtype=np.float32)
  text_emb = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0.5, 0.5]], np.float32)
  text_image = np.array([0, 0, 1, 2])
  # i2t similarity rows: img0 [1, .6, 0, 0] -> 0; img1 [0, .8, 1, .5] -> 0; img2 [0, 0, 0, .5] -> 0.
  # t2i rows: t0 [1, 0, 0] -> 0; t1 [.6, .8, 0]: img1 beats img0 -> 1; t2 -> 0; t3 [0, .5, .5]: tie -> 1.
  for chunk in (1, 2, 1024):
    i2t, t2i = retrieval.retrieval_ranks(image_emb, text_emb, text_image, chunk=chunk)
    np.testing.assert_array_equal(i2t, [0, 0, 0])
    np.testing.assert_array_equal(t2i, [0, 1, 0, 1])
  m = retrieval.retrieval_metrics(i2t, t2i)
  assert sorted(m) == sorted(RETRIEVAL_KEYS)
  assert m["retrieval_i2t_r1"] == 1.0 and m["retrieval_t2i_r1"] == 0.5 and m["retrieval_t2i_r5"] == 1.0
  with pytest.raises(ValueError, match="one image index"):
    retrieval.retrieval_ranks(image_emb, text_emb, np.array([0, 0, 1, 3]))


def test_zero_shot_accuracy_ties_are_misses():
  scores = np.array(
    [
      [3.0, 1.0, 2.0],  # label 0 strictly highest -> correct
      [1.0, 1.0, 0.0],  # label 0 tied for the top -> miss
      [0.0, 2.0, 2.0],  # label 1 tied for the top -> miss
      [0.0, 0.0, 5.0],
    ]
  )  # label 2 -> correct
  labels = np.array([0, 0, 1, 2])
  np.testing.assert_array_equal(retrieval.zero_shot_correct(scores, labels), [True, False, False, True])
  assert retrieval.zero_shot_accuracy(scores, labels) == 0.5
  assert retrieval.zero_shot_accuracy(np.ones((4, 3)), np.zeros(4, int)) == 0.0  # a constant model scores 0


def test_caption_objects_inverts_caption():
  for seed in range(5):
    scene = shapes.generate_scene(seed)
    assert shapes.caption_objects(scene.caption) == [(o.color, o.shape) for o in scene.objects]
  assert shapes.object_phrase("orange", "square") == "an orange square"
  with pytest.raises(ValueError, match="not a shapes caption"):
    shapes.caption_objects("a photo of a dog")


# ---- the kind switch ----------------------------------------------------------------------------


@pytest.fixture
def contrastive_config(tiny_config):
  c = config_files.load(os.path.join(CONFIGS, "contrastive.py"))
  c.data = tiny_config.data  # the tiny dataset (24 / 4 / 4 scenes) the other tests share
  c.update(
    dict(
      batch_size=16, eval_batch_size=8, total_steps=4, eval_every=2, checkpoint_every=2, log_every=1, sample_examples=4
    )
  )
  return c


def test_kind_switch_and_vlm_unchanged(tiny_config, contrastive_config):
  assert tiny_config.model.kind == "vlm"  # the base config's kind
  assert isinstance(build_model(tiny_config.model, 64), VisionLanguageModel)
  assert model_class(tiny_config.model) is VisionLanguageModel
  assert batches_lib.batch_keys(tiny_config) == vlm.BATCH_KEYS
  assert isinstance(build_model(contrastive_config.model, 64), ContrastiveModel)
  assert batches_lib.batch_keys(contrastive_config) == ("image", "target_out", "target_mask")
  assert contrastive_config.model.loss == "siglip"
  assert (
    config_files.load(os.path.join(CONFIGS, "contrastive.py"), overrides={"model.loss": "clip"}).model.loss == "clip"
  )
  tiny_config.model.kind = "diffusion"
  with pytest.raises(ValueError, match="model.kind='diffusion'"):
    model_class(tiny_config.model)
  # Checkpoints written before the switch existed are VLM checkpoints; a contrastive run refuses them.
  old = {"model": {k: v for k, v in tiny_config.model.to_dict().items() if k != "kind"}}
  _check_compatible(old, {"model": dict(old["model"], kind="vlm")}, "ckpt")
  with pytest.raises(CheckpointMismatch, match="model.kind: checkpoint 'vlm' vs now 'contrastive'"):
    _check_compatible(old, {"model": dict(old["model"], kind="contrastive")}, "ckpt")


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("grad_accum_steps", 2, "grad_accum_steps=1"),
    ("model.text.max_len", 32, "model.text.max_len"),
    ("data.captions", False, "data.captions=True"),
  ],
)
def test_contrastive_config_errors(contrastive_config, key, value, match):
  config_files.apply_overrides(contrastive_config, {key: value})
  with pytest.raises(ValueError, match=match):
    state_lib.make_setup(contrastive_config, 64)


def test_train_iterator_tasks(contrastive_config):
  data = pipeline.Data(contrastive_config)
  batch = next(data.train_iterator(tasks=("caption",)))
  assert (batch["task"] == TASK_CAPTION).all() and len(batch["task"]) == contrastive_config.batch_size
  with pytest.raises(ValueError, match="unknown tasks"):
    data.train_iterator(tasks=("captions",))


# ---- training ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["siglip", "clip"])
def test_loss_decreases_on_a_fixed_batch(contrastive_config, loss):
  c = contrastive_config
  c.model.loss = loss
  c.total_steps = 200  # the learning-rate schedule's length: little decay within the 40 steps here
  c.optim.update(dict(warmup_steps=1, learning_rate=1e-3))
  data = pipeline.Data(c)
  setup = state_lib.make_setup(c, data.tokenizer.vocab_size)
  state = state_lib.init_state(setup, jax.random.key(0))
  host = next(data.train_iterator(tasks=model_class(c.model).train_tasks))
  shardings = setup.batch_sharding(host)
  batch = {k: jax.device_put(host[k], shardings[k]) for k in batches_lib.batch_keys(c)}
  step = step_lib.make_train_step(setup, host)
  metrics = []
  with setup.context():
    for _ in range(40):  # the metrics of a step are those of the parameters it starts from
      state, m = step(state, batch)
      metrics.append({k: float(v) for k, v in m.items()})
  first, last = metrics[0], metrics[-1]
  losses = [x["loss"] for x in metrics]
  # Initial temperature and bias as in the papers: CLIP t = 1 / 0.07, SigLIP t = 10 and b = -10.
  assert first["temperature"] == pytest.approx(10.0 if loss == "siglip" else 1 / 0.07, rel=1e-6)
  assert first.get("logit_bias") == (pytest.approx(-10.0) if loss == "siglip" else None)
  assert np.isfinite(losses).all() and losses[-1] < 0.95 * losses[0], losses
  # Both are learned: they have moved by the last step (the warm-up's first update is 0).
  assert abs(last["temperature"] - first["temperature"]) > 1e-3
  if loss == "siglip":
    assert abs(last["logit_bias"] + 10.0) > 1e-3
  else:
    # A real fit: at the start every image picks its own caption among the 16 at chance (1/16); by the
    # last step on this batch at least 4 times as often, both ways. SigLIP's ranking moves later (its loss
    # first falls by lowering every pair's logit), so only CLIP's is checked.
    assert first["batch_i2t_accuracy"] <= 2 / 16 and first["batch_t2i_accuracy"] <= 2 / 16, first
    assert last["batch_i2t_accuracy"] >= 4 / 16 and last["batch_t2i_accuracy"] >= 4 / 16, last


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir):
  """A contrastive workdir trained 4 steps (validation at step 2, test at the end)."""
  c = config_files.load(os.path.join(CONFIGS, "contrastive.py"))
  tiny = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  c.data = tiny.data
  c.data.data_dir = shared_data_dir
  c.update(
    dict(
      batch_size=16, eval_batch_size=8, total_steps=4, eval_every=2, checkpoint_every=2, log_every=1, sample_examples=4
    )
  )
  wd = str(tmp_path_factory.mktemp("contrastive") / "run")
  final = trainer.train_and_evaluate(c, wd, progress=False)
  return c, wd, final


def brute_force_recall(t, split):
  """Image -> text and text -> image recall@1/5/10 of a loaded contrastive workdir `t` over the (image,
  caption) pairs of `split`, from its embeddings in float64: a match is at rank r when r candidates that
  do not match score at least as high as the best one that does (ties count against it)."""
  from mmjax.models.contrastive import caption_tokens

  sd = t.data.split(split)
  ids = np.flatnonzero(sd.task == TASK_CAPTION)
  ex = [sd.example(int(i)) for i in ids]
  batch = {k: np.stack([e[k] for e in ex]) for k in ("image", "target_out", "target_mask")}
  # jit: one compilation costs a fifth of the CPU time of running the towers op by op.
  img, txt, _, _ = jax.jit(t.setup.model.apply)(
    {"params": t.params}, batch["image"], *caption_tokens(batch["target_out"], batch["target_mask"])
  )
  img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
  records = [int(r) for r in sd.index[ids, 0]]
  images = sorted(set(records))  # one embedding per image (its captions' rows share it)
  image_emb = np.stack([img[records.index(r)] for r in images])
  sim = image_emb @ txt.T  # [images, captions]
  match = np.array([[r == c for c in records] for r in images])
  i2t = [int((sim[i][~match[i]] >= sim[i][match[i]].max()).sum()) for i in range(len(images))]
  t2i = [int((sim[:, j][~match[:, j]] >= sim[:, j][match[:, j]].max()).sum()) for j in range(len(records))]
  return {
    f"{split}/retrieval_{d}_r{k}": float(np.mean(np.asarray(ranks) < k))
    for d, ranks in (("i2t", i2t), ("t2i", t2i))
    for k in (1, 5, 10)
  }


@pytest.mark.slow
def test_train_writes_retrieval_metrics_and_resumes(trained, tmp_path):
  c, wd, final = trained
  rows = read_metrics(wd)
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
  assert any(
    r["step"] == 2 and all(f"validation/{k}" in r for k in RETRIEVAL_KEYS + ["zero_shot_accuracy"]) for r in rows
  )
  assert any(r["step"] == 4 and "test/retrieval_t2i_r1" in r for r in rows)
  assert all(k in rows[0] for k in ("train/loss", "train/batch_i2t_accuracy", "train/temperature", "train/logit_bias"))
  assert "token_accuracy" not in str(rows)
  assert os.path.exists(os.path.join(wd, "samples", "test_samples.png"))
  assert "own caption at rank" in open(os.path.join(wd, "samples", "test_samples.txt")).read()

  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  first = workdir_lib.load(copy)
  # Retrieval recall against a brute-force float64 ranking of the trained model's test embeddings (the
  # zero-shot metric is the shapes data's own: not checked here).
  want = brute_force_recall(first, "test")
  assert set(final) == set(want) | {"test/zero_shot_accuracy"}
  assert {k: final[k] for k in want} == pytest.approx(want, abs=1e-9)
  c = c.copy_and_resolve_references()
  c.total_steps = 6
  trainer.train_and_evaluate(c, copy, progress=False)
  assert [r["step"] for r in read_metrics(copy) if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
  second = workdir_lib.load(copy)
  assert (first.step, second.step) == (4, 6)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)))


@pytest.mark.slow
def test_entry_points_on_a_contrastive_workdir(trained, tmp_path):
  _, wd, _ = trained
  run = lambda script, *args: subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", script), f"--workdir={wd}", *args],
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = run("evaluate.py", "--split=validation")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "validation/retrieval_i2t_r1:" in out.stdout and "validation/zero_shot_accuracy:" in out.stdout

  image = tmp_path / "scene.png"
  from PIL import Image

  Image.fromarray(workdir_lib.load(wd).data.image("test", 0)).save(image)
  prompts = ["a red circle", "a red square", "a red triangle"]
  out = run("sample.py", f"--image={image}", *[f"--prompt={p}" for p in prompts])
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[0] == str(image) and sorted(line.split("\t")[1] for line in lines[1:]) == sorted(prompts)
  sims = [float(line.split("\t")[0]) for line in lines[1:]]
  assert sims == sorted(sims, reverse=True)
  # Generation flags and empty texts are clear errors, not tracebacks.
  bad = run("sample.py", f"--image={image}", "--prompt=a red circle", "--sampler=beam")
  assert bad.returncode != 0 and "contrastive model" in bad.stderr and "Traceback" not in bad.stderr
  bad = run("sample.py", f"--image={image}", "--prompt= ")
  assert bad.returncode != 0 and "prompt 0 is empty" in bad.stderr and "Traceback" not in bad.stderr
