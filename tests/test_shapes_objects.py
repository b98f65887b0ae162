"""The object-centric image encoder (mmjax/projects/shapes/objects.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mmjax.layers import pixel_coordinates
from mmjax.models import build_model
from mmjax.models.kind import base_model_config
from mmjax.models.vlm import image_encoder
from mmjax.projects.shapes.objects import (
  GeometricSelfAttention,
  KMeansSlots,
  ObjectEncoder,
  farthest_point_indices,
  mask_geometry,
  nearest_and_furthest,
  tokens_per_image,
)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.all(np.isfinite(a)), "NaN/Inf in result"
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def float64_params(variables):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), nn.unbox(variables)["params"])


@pytest.mark.parametrize("self_excluding,geometric", [(0, 0), (2, 0), (2, 2), (1, 3)])
def test_geometric_attention_matches_float64_reference(self_excluding, geometric):
  rng = np.random.default_rng(1)
  b, k, d, h = 2, 5, 16, 4
  x = jnp.asarray(rng.normal(size=(b, k, d)), jnp.float32)
  c = jnp.asarray(rng.uniform(-1, 1, (b, k, 2)), jnp.float32)
  slopes = (5.0, -3.0, 2.0, 0.0)
  log_mass = jnp.asarray(rng.uniform(-5, 0, (b, k)), jnp.float32)
  module = GeometricSelfAttention(
    h, d // h, slopes, self_excluding, implementation="xla", mass_prior=-1.5, geometric_heads=geometric
  )
  variables = module.init(jax.random.key(0), x, c, log_mass)
  out = module.apply(variables, x, c, log_mass)

  p, xs, cs, hd = float64_params(variables), np.asarray(x, np.float64), np.asarray(c, np.float64), d // h
  q, kk, v = (np.einsum("bke,ehd->bkhd", xs, p[n]["kernel"]) for n in ("query", "key", "value"))
  learned_bias = xs @ p["key_bias"]["kernel"] + p["key_bias"]["bias"]
  q[:, :, :geometric] = 0.0  # geometric heads: no content term ...
  key_bias = learned_bias - 1.5 * np.asarray(log_mass, np.float64)[..., None]  # [B, K, H]
  key_bias[..., :geometric] = 0.0  # ... no learned key bias, no mass prior ...
  largest = np.asarray(log_mass).argmax(-1)
  key_bias[np.arange(b), largest, :geometric] = -np.inf  # ... and never the largest segment
  dist2 = ((cs[:, :, None] - cs[:, None]) ** 2).sum(-1)  # [B, K, K]
  logits = (
    np.einsum("bihd,bjhd->bhij", q, kk) / np.sqrt(hd)
    - np.asarray(slopes)[None, :, None, None] * dist2[:, None]
    + key_bias.transpose(0, 2, 1)[:, :, None, :]
  )
  logits[:, :self_excluding, np.arange(k), np.arange(k)] = -np.inf
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  ref = np.einsum("bihd,hde->bie", np.einsum("bhij,bjhd->bihd", weights, v), p["out"]["kernel"])
  assert rel_err(out, ref) < 1e-5


def test_steep_slopes_read_the_nearest_and_furthest_other_object():
  """With steep slopes and no content term, a self-excluding near head returns the nearest *other*
  object's value and a far head the furthest one's (hand-placed centroids on a line)."""
  c = jnp.asarray([[[-0.9, 0.0], [-0.5, 0.0], [0.1, 0.0], [0.8, 0.0]]], jnp.float32)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 8)), jnp.float32)
  log_mass = jnp.zeros((1, 4))
  module = GeometricSelfAttention(2, 4, (400.0, -400.0), 2, implementation="xla")
  variables = nn.unbox(module.init(jax.random.key(0), x, c, log_mass))
  params = jax.tree.map(np.asarray, variables["params"])
  for name in ("query", "key"):
    params[name]["kernel"] = np.zeros_like(params[name]["kernel"])
  params["key_bias"]["kernel"] = np.zeros_like(params["key_bias"]["kernel"])
  # Value = identity per head, out = identity: the output is the attended objects' features.
  params["value"]["kernel"] = np.eye(8, dtype=np.float32).reshape(8, 2, 4)
  params["out"]["kernel"] = np.eye(8, dtype=np.float32).reshape(2, 4, 8)
  out = np.asarray(module.apply({"params": params}, x, c, log_mass))
  nearest, furthest = [1, 0, 1, 2], [3, 3, 0, 0]
  xs = np.asarray(x)[0]
  np.testing.assert_allclose(out[0, :, :4], xs[nearest, :4], atol=1e-4)
  np.testing.assert_allclose(out[0, :, 4:], xs[furthest, 4:], atol=1e-4)


def test_geometric_heads_read_the_nearest_and_furthest_whatever_the_learned_weights():
  """Geometric heads ignore the learned content and key-bias weights and the mass prior, however
  large: the near head still returns the nearest other object's value, the far head the furthest
  one's, and neither the largest segment's (the background), even where it is nearest."""
  c = jnp.asarray([[[-0.9, 0.0], [-0.5, 0.0], [0.1, 0.0], [0.8, 0.0], [-0.5, 0.05]]], jnp.float32)
  log_mass = jnp.asarray([[-4.0, -4.0, -4.0, -4.0, -0.3]])  # slot 4: a large segment beside slot 1
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 8)), jnp.float32)
  module = GeometricSelfAttention(2, 4, (300.0, -100.0), 2, implementation="xla", geometric_heads=2)
  variables = nn.unbox(module.init(jax.random.key(0), x, c, log_mass))
  params = jax.tree.map(lambda a: 30.0 * np.asarray(a), variables["params"])  # large learned weights
  params["slopes"] = np.asarray([300.0, -100.0])
  params["value"]["kernel"] = np.eye(8, dtype=np.float32).reshape(8, 2, 4)
  params["out"]["kernel"] = np.eye(8, dtype=np.float32).reshape(2, 4, 8)
  out = np.asarray(module.apply({"params": params}, x, c, log_mass))
  nearest, furthest = [1, 0, 1, 2], [3, 3, 0, 0]
  xs = np.asarray(x)[0]
  np.testing.assert_allclose(out[0, :4, :4], xs[nearest, :4], atol=1e-3)
  np.testing.assert_allclose(out[0, :4, 4:], xs[furthest, 4:], atol=1e-3)
  with pytest.raises(ValueError, match="geometric_heads=3"):
    GeometricSelfAttention(2, 4, (1.0, -1.0), geometric_heads=3).init(jax.random.key(0), x, c, log_mass)


def test_mask_geometry_of_hard_masks_is_hand_computed():
  h = w = 8
  coords = pixel_coordinates(h, w).reshape(-1, 2)  # pixel centres at -0.875, -0.625, ..., 0.875
  square = np.zeros((h, w), np.float32)
  square[1:3, 4:8] = 1.0  # rows 1-2, columns 4-7: 8 pixels
  attn = np.stack([square.reshape(-1), 1.0 - square.reshape(-1)], -1)[None]  # [1, 64, 2]: hard masks
  geo = np.asarray(mask_geometry(jnp.asarray(attn), jnp.asarray(coords)))
  xs, ys = (np.arange(4, 8) + 0.5) / 4 - 1, (np.arange(1, 3) + 0.5) / 4 - 1
  assert geo[0, 0, 0] == pytest.approx(np.log(8 / 64), abs=1e-4)
  np.testing.assert_allclose(geo[0, 0, 1:3], [xs.mean(), ys.mean()], atol=1e-6)
  np.testing.assert_allclose(geo[0, 0, 3:5], [xs.std(), ys.std()], atol=1e-3)
  assert abs(geo[0, 0, 5]) < 1e-3  # an axis-aligned rectangle: no correlation
  np.testing.assert_allclose(geo[0, 0, 6:8], 0.0, atol=1e-2)  # and no skew


def test_mask_geometry_matches_float64_moments_of_soft_masks():
  rng = np.random.default_rng(5)
  coords = pixel_coordinates(6, 10).reshape(-1, 2)
  attn = rng.dirichlet(np.ones(3), size=(2, 60))  # [2, 60, 3]: each pixel's weights over 3 slots
  geo = np.asarray(mask_geometry(jnp.asarray(attn, jnp.float32), jnp.asarray(coords), power=2.0))
  w = attn**2
  ref = []
  for b in range(2):
    for k in range(3):
      p = w[b, :, k] / w[b, :, k].sum()
      mean = p @ coords
      centred = coords - mean
      std = np.sqrt(p @ centred**2)
      corr = (p * centred[:, 0] * centred[:, 1]).sum() / std.prod()
      skew = (p @ centred**3) / std**3
      ref.append(np.concatenate([[np.log(w[b, :, k].sum() / 60)], mean, std, [corr], skew]))
  assert rel_err(geo.reshape(6, 8), np.stack(ref)) < 1e-4


def test_farthest_point_indices_hand_computed():
  x = jnp.asarray([[[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [0.0, 3.0], [5.0, 0.1]]])
  # Mean (2.02, 0.62); squared distances to it 4.46, 4.07, 9.26, 9.74, 9.15: row 3 first. From
  # (0, 3): row 2 (34) beats row 4 (33.41). Then the nearest-chosen distances of rows 0 and 1 are
  # 9 and 9.01: row 1.
  np.testing.assert_array_equal(np.asarray(farthest_point_indices(x, 3)), [[3, 2, 1]])


def test_kmeans_slots_give_each_colour_its_own_slot():
  """Three flat colours, three slots: every pixel ends up (almost) wholly in its colour's slot,
  the three colours in three different slots, and each slot's content is the mean of its pixels'
  values."""
  rng = np.random.default_rng(3)
  palette = np.asarray([[-1.0, -1.0, -1.0], [0.8, -0.8, -0.8], [-0.7, 0.6, 0.9]], np.float32)
  labels = rng.integers(0, 3, (2, 40))
  labels[:, :3] = [0, 1, 2]  # every colour present
  grouping = jnp.asarray(palette[labels])  # [2, 40, 3]
  values = jnp.asarray(rng.normal(size=(2, 40, 5)), jnp.float32)
  module = KMeansSlots(num_slots=3, width=8, iterations=2, mlp_dim=16)
  variables = module.init(jax.random.key(0), grouping, values)
  slots, attn = module.apply(variables, grouping, values)
  assert slots.shape == (2, 3, 8) and attn.shape == (2, 40, 3)
  attn = np.asarray(attn)
  np.testing.assert_allclose(attn.sum(-1), 1.0, atol=1e-5)
  for b in range(2):
    slot_of = attn[b].argmax(-1)
    assert attn[b].max(-1).min() > 0.99
    for colour in range(3):
      assert len(set(slot_of[labels[b] == colour])) == 1
    assert len(set(slot_of[:3])) == 3


def test_object_encoder_shapes_and_bad_input():
  images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  encoder = ObjectEncoder(
    num_slots=3,
    width=16,
    feature_dim=8,
    iterations=1,
    depth=1,
    num_heads=2,
    mlp_dim=32,
    slopes=(10.0, -10.0),
    self_excluding_heads=2,
    implementation="xla",
  )
  variables = encoder.init(jax.random.key(0), images)
  out = encoder.apply(variables, images)
  assert out.shape == (2, 3, 16) and np.all(np.isfinite(np.asarray(out)))
  with pytest.raises(ValueError, match="feature_stride"):
    encoder.apply(variables, images[:, :15, :15])
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    encoder.apply(variables, images[..., :1])
  wrong = ObjectEncoder(
    num_slots=3,
    width=16,
    feature_dim=8,
    iterations=1,
    depth=1,
    num_heads=2,
    mlp_dim=32,
    slopes=(10.0,),
    implementation="xla",
  )
  with pytest.raises(ValueError, match="slopes"):
    wrong.init(jax.random.key(0), images)


def test_object_geometry_comes_from_full_resolution_masks():
  """Grouping runs on every second pixel, but each slot's size and centroid come from the masks of
  all pixels: an untrained encoder's sizes are the objects' exact pixel counts and its centroids
  the means of their pixels (hand-drawn shapes scenes, shapes.object_mask as the reference)."""
  from mmjax.projects.shapes import scenes as shapes

  scenes = [shapes.generate_scene([5, 0, i]) for i in range(3)]
  images = np.stack([s.image for s in scenes])
  encoder = ObjectEncoder(implementation="xla")  # the default: 7 slots, stride 2
  variables = encoder.init(jax.random.key(0), images[:1])
  _, state = encoder.apply(
    variables, images, capture_intermediates=lambda m, _: m.name == "slots", mutable=["intermediates"]
  )
  masks = np.asarray(state["intermediates"]["slots"]["__call__"][0][1])
  assert masks.shape == (3, 64 * 64, 7)
  geometry = np.asarray(mask_geometry(jnp.asarray(masks), jnp.asarray(pixel_coordinates(64, 64).reshape(-1, 2))))
  for b, scene in enumerate(scenes):
    for obj in scene.objects:
      true = shapes.object_mask(obj, 64).reshape(-1)
      slot = masks[b][true].mean(0).argmax()
      assert np.exp(geometry[b, slot, 0]) * 64 * 64 == pytest.approx(true.sum(), rel=1e-3)
      ys, xs = np.nonzero(shapes.object_mask(obj, 64))
      centre = (np.array([xs.mean(), ys.mean()]) + 0.5) / 64 * 2 - 1  # pixel centres in [-1, 1] units
      np.testing.assert_allclose(geometry[b, slot, 1:3], centre, atol=1e-3)


def test_clean_tokens_are_the_objects_before_the_relation_layers():
  """With clean_tokens the encoder returns 2K tokens; the first K do not depend on the relation
  layers (changing their weights moves only the last K), the last K are the plain encoder's."""
  images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  kwargs = dict(
    num_slots=3,
    width=16,
    feature_dim=8,
    iterations=1,
    depth=1,
    num_heads=2,
    mlp_dim=32,
    slopes=(10.0, -10.0),
    geometric_heads=1,
    implementation="xla",
  )
  encoder = ObjectEncoder(**kwargs, clean_tokens=True)
  params = nn.unbox(encoder.init(jax.random.key(0), images))["params"]
  out = np.asarray(encoder.apply({"params": params}, images))
  assert out.shape == (2, 6, 16) and np.all(np.isfinite(out))
  moved = jax.tree.map(np.asarray, params)
  kernel = moved["relation_0_attention"]["value"]["kernel"]
  moved["relation_0_attention"]["value"]["kernel"] = kernel + np.random.default_rng(2).normal(size=kernel.shape)
  out2 = np.asarray(encoder.apply({"params": moved}, images))
  np.testing.assert_array_equal(out2[:, :3], out[:, :3])
  assert rel_err(out2[:, 3:], out[:, 3:]) > 1e-2
  plain = ObjectEncoder(**kwargs)
  plain_params = {k: v for k, v in params.items() if k not in ("token_kind", "norm_clean")}
  np.testing.assert_allclose(
    out[:, 3:] - np.asarray(params["token_kind"])[1],
    np.asarray(plain.apply({"params": plain_params}, images)),
    atol=1e-5,
  )


def test_nearest_and_furthest_skip_self_and_background():
  rng = np.random.default_rng(4)
  centroids = rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32)
  log_mass = rng.normal(size=(3, 6)).astype(np.float32)
  near, far = (np.asarray(x) for x in nearest_and_furthest(jnp.asarray(centroids), jnp.asarray(log_mass)))
  for b in range(3):
    background = log_mass[b].argmax()
    for i in range(6):
      others = [j for j in range(6) if j not in (i, background)]
      dist = [float(((centroids[b, i] - centroids[b, j]) ** 2).sum()) for j in others]
      assert near[b, i] == others[int(np.argmin(dist))] and far[b, i] == others[int(np.argmax(dist))]


def test_neighbour_tokens_pair_each_object_with_its_nearest_and_furthest():
  """4K tokens with clean and neighbour tokens: the first 2K are the clean_tokens encoder's, and
  each pair token is the partner's clean token plus a projection of the object's own, for the
  partner that nearest_and_furthest picks from the slots' geometry."""
  images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  kwargs = dict(
    num_slots=4,
    width=16,
    feature_dim=8,
    iterations=1,
    depth=1,
    num_heads=2,
    mlp_dim=32,
    slopes=(10.0, -10.0),
    geometric_heads=1,
    implementation="xla",
    clean_tokens=True,
  )
  encoder = ObjectEncoder(**kwargs, neighbour_tokens=True)
  assert tokens_per_image(4, True, True) == 16 and tokens_per_image(4) == 4
  params = nn.unbox(encoder.init(jax.random.key(0), images))["params"]
  out = np.asarray(encoder.apply({"params": params}, images))
  assert out.shape == (2, 16, 16) and np.all(np.isfinite(out))
  plain = ObjectEncoder(**kwargs)
  keep = {k: v for k, v in params.items() if k in nn.unbox(plain.init(jax.random.key(0), images))["params"]}
  np.testing.assert_allclose(out[:, :8], np.asarray(plain.apply({"params": keep}, images)), atol=1e-5)
  clean = out[:, :4] - np.asarray(params["token_kind"])[0]
  _, state = encoder.apply(
    {"params": params}, images, capture_intermediates=lambda m, _: m.name == "slots", mutable=["intermediates"]
  )
  masks = state["intermediates"]["slots"]["__call__"][0][1]  # every pixel's slot weights
  geometry = np.asarray(mask_geometry(masks, jnp.asarray(pixel_coordinates(16, 16).reshape(-1, 2))))
  partners = [
    np.asarray(x) for x in nearest_and_furthest(jnp.asarray(geometry[..., 1:3]), jnp.asarray(geometry[..., 0]))
  ]
  for r, name in enumerate(("nearest", "furthest")):
    dense = params[f"{name}_self"]
    tokens = out[:, 8 + 4 * r : 12 + 4 * r] - np.asarray(params["neighbour_kind"])[r]
    for b in range(2):
      for i in range(4):
        j = partners[r][b, i]
        assert j != i
        want = clean[b, j] + clean[b, i] @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
        np.testing.assert_allclose(tokens[b, i], want, atol=1e-4)


def test_model_with_object_encoder_and_unknown_encoder_name():
  config = ml_collections.ConfigDict(
    dict(
      base_model_config().to_dict(),
      attention_implementation="xla",
      image_encoder="mmjax.projects.shapes.objects:ObjectEncoder",
      objects=dict(
        num_slots=3, width=16, feature_dim=8, iterations=1, depth=1, num_heads=2, mlp_dim=32, slopes=(10.0, -10.0)
      ),
      text=dict(width=16, depth=1, num_heads=2, mlp_dim=32, max_len=8),
      fusion=dict(name="cross_attention", cross_attention_every=1, num_heads=2, mlp_dim=32),
      decoder=dict(width=16, depth=1, num_heads=2, mlp_dim=32, max_len=16),
    )
  )
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 16, 16, 3)).astype(np.uint8)
  prompt = rng.integers(4, 20, (2, 5)).astype(np.int32)
  target = rng.integers(4, 20, (2, 4)).astype(np.int32)
  model = build_model(config, 20)
  variables = model.init(jax.random.key(0), images, prompt, np.array([5, 3], np.int32), target)
  assert "image_encoder" in variables["params"]
  assert model.apply(variables, images, prompt, np.array([5, 3], np.int32), target).shape == (2, 4, 20)
  with pytest.raises(ValueError, match="image_encoder='resnet'.*'vit'"):
    image_encoder(ml_collections.ConfigDict(dict(image_encoder="resnet")))
  with pytest.raises(ValueError, match="config.model.objects block"):
    image_encoder(ml_collections.ConfigDict(dict(image_encoder="mmjax.projects.shapes.objects:ObjectEncoder")))


@pytest.mark.slow
def test_object_encoder_trains_resumes_samples_and_inspects(tiny_config, tmp_path):
  """The main job's image path end to end: train with the object encoder, resume, answer a question
  about an image file, and inspect the slots; inspecting a ViT workdir is a clear error."""
  import json
  import os
  import subprocess
  import sys

  from PIL import Image

  from mmjax import config_files
  from mmjax.train import trainer, workdir as workdir_lib
  from tests.conftest import ROOT

  project = config_files.load(os.path.join(ROOT, "experiments", "configs", "proj", "shapes", "objects.py"))
  tiny_config.model.image_encoder = project.model.image_encoder  # the project job's encoder, tiny sizes
  with tiny_config.unlocked():  # a loaded config is locked: adding the project's block is explicit
    tiny_config.model.objects = project.model.objects
  tiny_config.model.objects.update(
    dict(width=32, feature_dim=8, iterations=2, depth=1, num_heads=2, mlp_dim=64, slopes=(60.0, -30.0))
  )
  tiny_config.total_steps = 2
  tiny_config.checkpoint_every = 2
  wd = str(tmp_path / "objects")
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  tiny_config.total_steps = 3
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  trained = workdir_lib.load(wd)
  assert trained.step == 3 and "slots" in trained.params["image_encoder"]

  image = tmp_path / "scene.png"
  Image.fromarray(trained.data.image("test", 0)).save(image)
  run = lambda script, *args: subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", script), f"--workdir={wd}", *args],
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = run("sample.py", f"--image={image}", "--prompt=what shape is the red object?")
  assert out.returncode == 0 and len(out.stdout.splitlines()) == 1, out.stderr[-2000:]

  out = run("proj/shapes/inspect_slots.py", "--split=train", "--num_images=4")
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  separate = lines[1].split(":")[1].split("/")
  assert int(separate[1]) == 4
  # Colour grouping holds from step 0: every object gets its own slot and the slot's centroid
  # (of its full-resolution mask) is within a pixel of the object's.
  assert int(separate[0]) == 4 and float(lines[3].split()[-1]) < 0.25, out.stdout

  out = run("evaluate.py", "--split=validation", "--max_examples=40", "--by_template")
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(wd, "samples", "validation_templates.json")) as f:
    table = json.load(f)
  # Each template's accuracy is a whole number of its questions answered right.
  assert table and all(t.count("<") >= 1 and r["count"] >= 1 for t, r in table.items())
  assert all(abs(r["accuracy"] * r["count"] - round(r["accuracy"] * r["count"])) < 1e-6 for r in table.values())
  printed = dict(reversed(line.split("n=")[1].split(None, 1)) for line in out.stdout.splitlines() if " n=" in line)
  assert {t: int(n) for t, n in printed.items()} == {t: r["count"] for t, r in table.items()}

  tiny_config.model.image_encoder = "vit"
  vit_wd = str(tmp_path / "vit")
  tiny_config.total_steps = 1
  trainer.train_and_evaluate(tiny_config, vit_wd, progress=False)
  bad = subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "proj", "shapes", "inspect_slots.py"), f"--workdir={vit_wd}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0 and "model.image_encoder='vit'" in bad.stderr
