"""The text-to-image flow-matching kind (config.model.kind "t2i_flow") through the one trainer: train on
the shapes data's t2i variant -> loss falls -> the six t2i metrics in metrics.jsonl -> resume; the
sampler's determinism and its guidance-1 identity; the dataset's image-scorer hook; config errors."""

import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import config_files
from mmjax.data.examples import TASK_CAPTION
from mmjax.evaluate.contrastive import caption_text
from mmjax.models import model_class
from mmjax.models.contrastive import caption_tokens
from mmjax.models.text_to_image import TextToImageFlow
from mmjax.sample import text_to_image as t2i_sample
from mmjax.train import state as state_lib, trainer, workdir as workdir_lib
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS

T2I_KEYS = [f"t2i_{m}_accuracy{s}" for s in ("", "_noguidance") for m in ("object", "scene", "relation")]
CONFIG = os.path.join(CONFIGS, "t2i_flow.py")


@pytest.fixture
def tiny_t2i(shared_data_dir):
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir):
  """A t2i workdir trained 8 steps (validation at step 4, test at the end)."""
  c = config_files.load(CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  wd = str(tmp_path_factory.mktemp("t2i") / "run")
  final = trainer.train_and_evaluate(c, wd, progress=False)
  return c, wd, final


def test_kind_and_config_errors(tiny_t2i):
  assert model_class(tiny_t2i.model) is TextToImageFlow
  assert config_files.load(CONFIG).model.dit.patch_size == 4  # the full config parses
  for key, value, match in (
    ("model.text.max_len", 8, "model.text.max_len"),
    ("data.captions", False, "data.captions=True"),
    ("model.t_sampling", "beta", "t_sampling"),
    ("model.dit.patch_size", 5, "patch_size=5"),
  ):
    c = tiny_t2i.copy_and_resolve_references()
    config_files.apply_overrides(c, {key: value})
    with pytest.raises(ValueError, match=match):
      state_lib.make_setup(c, 64)


def test_train_evaluate_and_resume(trained, tmp_path):
  c, wd, final = trained
  rows = read_metrics(wd)
  losses = [r["train/loss"] for r in rows if "train/loss" in r]
  assert len(losses) == 8 and np.isfinite(losses).all()
  # At init the DiT outputs 0, so the loss is E|eps - x0|^2; the first steps learn at least the mean.
  assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses
  assert all(k in rows[0] for k in ("train/x0_mse", "train/null_condition_fraction", "train/t_mean"))
  for split, step in (("validation", 4), ("test", 8)):
    got = [r for r in rows if r["step"] == step and f"{split}/t2i_object_accuracy" in r]
    assert len(got) == 1, rows
    for k in T2I_KEYS:
      v = got[0][f"{split}/{k}"]
      assert np.isfinite(v) and 0.0 <= v <= 1.0, (k, v)
  assert sorted(final) == sorted(f"test/{k}" for k in T2I_KEYS)
  report = open(os.path.join(wd, "samples", "test_samples.txt")).read()
  assert "guided: t2i_object_accuracy=" in report and os.path.exists(os.path.join(wd, "samples", "test_samples.png"))

  copy = str(tmp_path / "run")
  shutil.copytree(wd, copy)
  first = workdir_lib.load(copy)
  c = c.copy_and_resolve_references()
  c.total_steps = 10
  trainer.train_and_evaluate(c, copy, progress=False)
  assert [r["step"] for r in read_metrics(copy) if "train/loss" in r] == list(range(1, 11))
  second = workdir_lib.load(copy)
  assert (first.step, second.step) == (8, 10)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params)))


def test_generation_deterministic_and_guidance_one_is_conditional(trained):
  _, wd, _ = trained
  t = workdir_lib.load(wd)
  sd = t.data.split("test")
  # 8 rows: divisible by any simulated device count the worker may run with (the batch is sharded).
  ids = np.resize(np.flatnonzero(sd.task == TASK_CAPTION), 8)
  ex = [sd.example(int(i)) for i in ids]
  tokens, lengths = caption_tokens(*(np.stack([e[k] for e in ex]) for k in ("target_out", "target_mask")))
  run = t2i_sample.make_generate_fn(t.setup, dict(steps=4, method="heun"))
  key = jax.random.key(3)
  a, b = run(t.params, tokens, lengths, key), run(t.params, tokens, lengths, key)
  assert a.dtype == np.uint8 and a.shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, run(t.params, tokens, lengths, jax.random.key(4)))
  # Guidance 1 on the doubled batch is the conditional velocity up to float rounding, so the pixels
  # agree up to a rounding step.
  one = run(t.params, tokens, lengths, key, 1.0)
  assert np.abs(one.astype(int) - a.astype(int)).max() <= 1
  assert (one == a).mean() > 0.99
  # A larger scale changes the images (the two conditions differ after training).
  assert not np.array_equal(run(t.params, tokens, lengths, key, 3.0), a)


def test_image_scorer_hook(trained, tiny_config):
  _, wd, _ = trained
  t = workdir_lib.load(wd)
  scorer = t.data.source.image_scorer
  sd = t.data.split("test")
  ids = np.flatnonzero(sd.task == TASK_CAPTION)
  prompts = [caption_text(sd, int(i)) for i in ids]
  images = np.stack([t.data.image("test", int(i)) for i in ids])
  # The dataset's own images fit their captions exactly.
  scores = scorer(t.data.builder.builder_config, prompts, images)
  assert scores == {"t2i_object_accuracy": 1.0, "t2i_scene_accuracy": 1.0, "t2i_relation_accuracy": 1.0}
  # The question scenes are not scored: an error naming the switch, not a silent {}.
  from mmjax.projects.shapes import data as shapes_data

  with pytest.raises(ValueError, match="t2i.enabled=True"):
    scorer(shapes_data.builder_config(tiny_config.data), prompts, images)
  with pytest.raises(ValueError, match="cannot parse prompt"):
    scorer(t.data.builder.builder_config, ["a dog next to a cat"], images[:1])


def test_frechet_in_the_features_of_a_t2i_features_run(trained, shared_data_dir, tmp_path):
  """experiments/configs/t2i_features.py trains the contrastive feature space; the evaluator's
  t2i_frechet is the distance between the generated images and the split's images of the same prompts
  in it: recomputed here from the features in float64 with scipy's matrix square root."""
  import scipy.linalg

  from mmjax.evaluate import frechet
  from mmjax.evaluate.text_to_image import evaluate_split
  from mmjax.sample.text_to_image import make_generate_fn

  c = config_files.load(os.path.join(CONFIGS, "t2i_features.py"), "tiny")
  c.data.data_dir = shared_data_dir
  c.update(dict(total_steps=2, eval_every=0, checkpoint_every=2, sample_examples=0))
  assert c.model.kind == "contrastive" and c.data.shapes.t2i.enabled and c.data.image_size == 32
  features_wd = str(tmp_path / "features")
  trainer.train_and_evaluate(c, features_wd, progress=False)
  features_fn = frechet.make_features_fn(features_wd, workdir_lib.load)

  _, wd, _ = trained
  t = workdir_lib.load(wd)
  metrics, predictions = evaluate_split(
    t.data, "test", make_generate_fn(t.setup), t.params, t.config, max_examples=8, features_fn=features_fn
  )
  real = np.stack([t.data.image("test", p["example_id"]) for p in predictions])
  assert len(predictions) == 8

  def distance(images):
    a, b = (np.asarray(features_fn(x), np.float64) for x in (images, real))
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real))

  for suffix, key in (("", "image"), ("_noguidance", "image_noguidance")):
    want = distance(np.stack([p[key] for p in predictions]))
    got = metrics[f"test/t2i_frechet{suffix}"]
    assert want > 1e-3 and np.isfinite(got)  # an 8-step model's images are not the data's
    np.testing.assert_allclose(got, want, rtol=1e-3)


LATENT_CONFIG = os.path.join(CONFIGS, "t2i_flow_latent.py")


def test_latent_flow_reads_the_autoencoders_latents_as_fixed_targets(shared_data_dir):
  """Latent flow matching: the flow's loss gives the autoencoder no gradient (its latents are fixed
  targets; without the stop-gradient the encoder could shrink them to ease the flow), the
  reconstruction loss gives it one, and the DiT runs on the latent grid."""
  c = config_files.load(LATENT_CONFIG, "tiny")
  model = model_class(c.model)(c.model, 64)
  assert model.sample_shape(32) == (4, 4, 4)
  rng = np.random.default_rng(0)
  mask = (np.arange(24)[None] < rng.integers(3, 12, (4, 1))).astype(np.float32)
  batch = dict(
    image=rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8),
    target_out=(rng.integers(4, 64, (4, 24)) * mask).astype(np.int32),
    target_mask=mask,
  )
  params = nn.meta.unbox(model.init(jax.random.key(0), *model.init_inputs(c.model, batch)[0]))["params"]
  assert (
    "autoencoder" in params and params["dit"]["patch_embed"]["kernel"].shape[0] == 1 * 1 * 4
  )  # 1x1 patches of 4 latent channels

  def grads(weight):
    with c.unlocked():
      c.model.autoencoder_weight = weight
    m = model_class(c.model)(c.model, 64)
    loss = lambda p: m.apply({"params": p}, batch, method="loss_sums", rngs={"sample": jax.random.key(1)})[0]
    return jax.jit(jax.grad(loss))(params)  # one compiled step: eager op-by-op costs minutes

  norm = lambda tree: float(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))
  flow_only = grads(0.0)
  assert norm(flow_only["autoencoder"]) == 0.0 and norm(flow_only["dit"]) > 0.0
  assert norm(grads(1.0)["autoencoder"]) > 0.0


def test_latent_flow_trains_evaluates_and_draws(shared_data_dir, tmp_path):
  c = config_files.load(LATENT_CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  wd = str(tmp_path / "run")
  final = trainer.train_and_evaluate(c, wd, progress=False)
  rows = read_metrics(wd)
  train = [r for r in rows if "train/loss" in r]
  assert np.isfinite([r["train/loss"] for r in train]).all() and "train/autoencoder_recon_mse" in train[-1]
  assert train[-1]["train/autoencoder_recon_mse"] < train[0]["train/autoencoder_recon_mse"]
  assert sorted(final) == sorted(f"test/{k}" for k in T2I_KEYS)
  t = workdir_lib.load(wd)
  tokens, lengths = np.full((8, 5), 7, np.int32), np.full((8,), 5, np.int32)
  images = t2i_sample.make_generate_fn(t.setup, dict(steps=2, method="euler"))(
    t.params, tokens, lengths, jax.random.key(0)
  )
  assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)


def test_latent_grid_must_tile_into_dit_patches(shared_data_dir):
  c = config_files.load(LATENT_CONFIG, "tiny")
  c.data.data_dir = shared_data_dir
  c.model.dit.patch_size = 8  # 32 / 8 = a 4x4 latent grid: not a multiple of 8
  with pytest.raises(ValueError, match="autoencoder.patch_size x config.model.dit.patch_size = 8 x 8"):
    state_lib.make_setup(c, 64)
