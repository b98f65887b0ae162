"""CLIP / SigLIP losses vs float64 numpy references; batch-sharded (8 simulated devices) == unsharded."""

import os
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import pytest

from mmjax.models.contrastive import ContrastiveModel, clip_loss, contrastive_loss, siglip_loss
from mmjax.models.kind import base_model_config
from tests.conftest import ROOT


def np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_clip(img, txt, log_t):
  logits = np.exp(log_t) * img @ txt.T

  def xent(l):  # rows: softmax over columns, target = diagonal
    m = l.max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(l - m).sum(1))
    return np.mean(lse - np.diag(l))

  return 0.5 * (xent(logits) + xent(logits.T))


def np_siglip(img, txt, log_t, b):
  n = len(img)
  total = 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      total += np.log1p(np.exp(-z * (np.exp(log_t) * img[i] @ txt[j] + b)))
  return total / n


def embeddings(n=8, d=6, seed=0):
  rng = np.random.default_rng(seed)
  return np_normalize(rng.normal(size=(n, d))), np_normalize(rng.normal(size=(n, d)))


def test_losses_match_float64_numpy():
  img, txt = embeddings()
  for log_t in (0.0, np.log(1 / 0.07)):
    np.testing.assert_allclose(
      float(clip_loss(img.astype(np.float32), txt.astype(np.float32), log_t)), np_clip(img, txt, log_t), rtol=1e-5
    )
  for log_t, b in ((np.log(10.0), -10.0), (1.0, 0.5)):
    np.testing.assert_allclose(
      float(siglip_loss(img.astype(np.float32), txt.astype(np.float32), log_t, b)),
      np_siglip(img, txt, log_t, b),
      rtol=1e-5,
    )
  with pytest.raises(ValueError, match="siglip"):
    contrastive_loss(img, txt, 0.0, None, "siglip")


def small_config(loss):
  return ml_collections.ConfigDict(
    dict(
      base_model_config().to_dict(),
      kind="contrastive",
      attention_implementation="xla",
      embed_dim=16,
      loss=loss,
      vit=dict(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=8, posemb="learn"),
      text=dict(width=16, depth=1, num_heads=2, mlp_dim=32, max_len=8),
    )
  )


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_model_outputs_and_learnable_temperature(loss):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  tokens = rng.integers(1, 20, (4, 8)).astype(np.int32)
  lengths = np.array([8, 3, 5, 1], np.int32)
  model = ContrastiveModel(small_config(loss), 20)
  params = model.init(jax.random.key(0), images, tokens, lengths)
  img, txt, scale, bias = model.apply(params, images, tokens, lengths)
  assert img.shape == txt.shape == (4, 16)
  np.testing.assert_allclose(np.linalg.norm(img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(float(scale), np.log(10.0) if loss == "siglip" else np.log(1 / 0.07), rtol=1e-6)
  assert bias is None if loss == "clip" else float(bias) == -10.0  # SigLIP's initial bias
  # The trainer's path (loss_sums, on a pipeline-style batch) against the loss in float64 numpy.
  # Pipeline rows are [t1..tn, eos, pad..] with the mask on t1..tn and eos: one column more than tokens.
  n = np.minimum(lengths, 7)
  target_out = np.pad(np.where(np.arange(7)[None] < n[:, None], tokens[:, :7], 0), ((0, 0), (0, 1)))
  batch = {
    "image": images,
    "target_out": target_out,
    "target_mask": (np.arange(8)[None] <= n[:, None]).astype(np.float32),
  }
  (value, sums), grads = jax.value_and_grad(lambda p: model.apply(p, batch, method="loss_sums"), has_aux=True)(params)
  img2, txt2, scale2, bias2 = (
    np.asarray(x, np.float64) if x is not None else None for x in model.apply(params, images, target_out, n)
  )

  def np_loss(log_t, b):
    logits = np.exp(log_t) * img2 @ txt2.T + (0.0 if b is None else b)
    if loss == "clip":
      lse = lambda x, ax: np.log(np.exp(x - x.max(ax, keepdims=True)).sum(ax)) + x.max(ax)
      return 0.5 * ((lse(logits, 1) - np.diag(logits)).mean() + (lse(logits, 0) - np.diag(logits)).mean())
    z = 2 * np.eye(4) - 1
    return np.log1p(np.exp(-z * logits)).sum() / 4

  np.testing.assert_allclose(float(value), np_loss(scale2, bias2), rtol=1e-5)
  assert float(sums["weight"]) == 1.0
  # The temperature (and SigLIP's bias) are learned: their gradients equal the float64 loss's derivatives
  # (central differences) at the model's embeddings.
  unbox = lambda x: float(np.asarray(getattr(x, "unbox", lambda: x)())[0])
  h = 1e-6
  d_scale = (np_loss(scale2 + h, bias2) - np_loss(scale2 - h, bias2)) / (2 * h)
  np.testing.assert_allclose(unbox(grads["params"]["logit_scale"]), d_scale, rtol=1e-4)
  if loss == "siglip":
    d_bias = (np_loss(scale2, bias2 + h) - np_loss(scale2, bias2 - h)) / (2 * h)
    np.testing.assert_allclose(unbox(grads["params"]["logit_bias"]), d_bias, rtol=1e-4)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mmjax import sharding
    from mmjax.models.contrastive import clip_loss, siglip_loss
    assert jax.device_count() == 8, jax.devices()
    data = np.load(sys.argv[1])
    img, txt = data["img"].astype(np.float32), data["txt"].astype(np.float32)
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    s = sharding.batch_sharding(mesh, 2)
    gi, gt = jax.device_put(img, s), jax.device_put(txt, s)
    assert len(gi.sharding.device_set) == 8 and gi.addressable_shards[0].data.shape == (2, img.shape[1])
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
      c = jax.jit(lambda a, b: clip_loss(a, b, jnp.float32(2.0)))(gi, gt)
      g = jax.jit(lambda a, b: siglip_loss(a, b, jnp.float32(1.5), jnp.float32(-2.0)))(gi, gt)
    print(json.dumps({"clip": float(c), "siglip": float(g)}))
""")


def test_batch_sharded_loss_equals_unsharded(tmp_path):
  img, txt = embeddings(n=16, d=8, seed=2)
  path = str(tmp_path / "emb.npz")
  np.savez(path, img=img, txt=txt)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-c", SHARDED_SCRIPT, path], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  import json

  got = json.loads(out.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(got["clip"], np_clip(img, txt, 2.0), rtol=1e-5)
  np.testing.assert_allclose(got["siglip"], np_siglip(img, txt, 1.5, -2.0), rtol=1e-5)
