"""The Fréchet distance (mmjax.evaluate.frechet) against closed forms and scipy's matrix square root,
Gaussian moments against numpy, a shifted image set scoring farther than a resample, the contrastive
feature space on a trained tiny contrastive workdir against the model's own image embedding, Inception-V3
(mmjax.encoders.inception) against an independently written torch network on random weights, and the
errors of config.evaluate.frechet_features."""

import json
import os
import types

import jax
import numpy as np
import pytest
import scipy.linalg

from mmjax import config_files
from mmjax.data.examples import TASK_CAPTION
from mmjax.evaluate import frechet
from mmjax.models import model_class
from mmjax.models.contrastive import caption_tokens
from mmjax.pretrained import checkpoint
from mmjax.train import trainer, workdir as workdir_lib
from tests.conftest import CONFIGS


def random_spd(rng, d, floor=0.1):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + floor * np.eye(d)


def reference_distance(mu1, s1, mu2, s2):
  """The textbook formula with scipy's general matrix square root of the (non-symmetric) product."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  assert np.abs(np.imag(covmean)).max() < 1e-8
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


# ---- the distance --------------------------------------------------------------------------------


def test_one_dimensional_closed_form():
  rng = np.random.default_rng(0)
  for _ in range(20):
    m1, m2 = rng.normal(size=2) * 3
    v1, v2 = rng.uniform(0.01, 5.0, size=2)
    want = (m1 - m2) ** 2 + v1 + v2 - 2 * np.sqrt(v1 * v2)
    got = frechet.frechet_distance([m1], [[v1]], [m2], [[v2]])
    assert isinstance(got, float) and got == pytest.approx(want, rel=1e-10, abs=1e-12)
  # Equal variances: the distance is the squared mean difference alone.
  assert frechet.frechet_distance([1.5], [[2.0]], [-0.5], [[2.0]]) == pytest.approx(4.0, rel=1e-12)


def test_diagonal_and_commuting_covariances():
  rng = np.random.default_rng(1)
  d = 12
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.05, 4.0, size=d), rng.uniform(0.05, 4.0, size=d)
  # For commuting covariances (S1 S2)^(1/2) = Q diag(sqrt(a b)) Q^T, so the trace terms are a sum of squares.
  want = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  assert not np.allclose(s1, np.diag(np.diag(s1)))  # really not diagonal
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)


def test_identical_gaussians_are_at_zero():
  rng = np.random.default_rng(2)
  for d in (1, 5, 32):
    mu, s = rng.normal(size=d), random_spd(rng, d)
    assert abs(frechet.frechet_distance(mu, s, mu, s)) < 1e-8
  # A singular covariance (fewer samples than dimensions) too.
  mu, s = frechet.gaussian_moments(rng.normal(size=(6, 20)))
  assert np.linalg.matrix_rank(s) == 5
  assert abs(frechet.frechet_distance(mu, s, mu, s)) < 1e-8


def test_against_scipy_sqrtm():
  rng = np.random.default_rng(3)
  for d in (2, 7, 24):
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) * 0.3
    s1, s2 = random_spd(rng, d), random_spd(rng, d, floor=0.5)
    want = reference_distance(mu1, s1, mu2, s2)
    assert want > 0.1
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-8)
    # Symmetric in its two Gaussians.
    assert frechet.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(want, rel=1e-8)


def test_gaussian_moments_match_numpy():
  rng = np.random.default_rng(4)
  x = (rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + rng.normal(size=6)).astype(np.float32)
  mu, sigma = frechet.gaussian_moments(x)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(mu, np.mean(x.astype(np.float64), axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)
  assert np.abs(sigma).min() > 0


def test_errors():
  with pytest.raises(ValueError, match="different dimensions"):
    frechet.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"sigma1 \[D, D\]"):
    frechet.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="NaN"):
    frechet.frechet_distance(np.zeros(2), np.array([[1.0, 0], [0, np.nan]]), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="at least 2 samples"):
    frechet.gaussian_moments(np.ones((1, 4)))
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    frechet.gaussian_moments(np.ones(4))
  with pytest.raises(ValueError, match="NaN"):
    frechet.gaussian_moments(np.array([[0.0, 1.0], [np.nan, 2.0]]))
  with pytest.raises(ValueError, match="uint8"):
    frechet.frechet_between(lambda x: x, np.zeros((4, 8, 8, 3), np.float32), np.zeros((4, 8, 8, 3), np.uint8))


def test_shifted_images_are_farther_than_a_resample():
  proj = np.random.default_rng(5).normal(size=(4 * 4 * 3, 8))

  def features_fn(images):  # 4 x 4 block means of the pixels, randomly projected to 8 dimensions
    x = images.astype(np.float64).reshape(len(images), 4, 4, 4, 4, 3).mean(axis=(2, 4))
    return (x.reshape(len(images), -1) @ proj).astype(np.float32)

  def scenes(seed, n, brightness=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 180, size=(n, 1, 1, 3))  # a colour per image plus pixel noise
    return np.clip(base + brightness + rng.integers(-30, 30, size=(n, 16, 16, 3)), 0, 255).astype(np.uint8)

  real = scenes(10, 400)
  resample, shifted = scenes(11, 400), scenes(12, 400, brightness=25)
  d_resample = frechet.frechet_between(features_fn, resample, real)
  d_shifted = frechet.frechet_between(features_fn, shifted, real)
  # frechet_between is the distance of the two feature sets' moments.
  want = frechet.frechet_distance(
    *frechet.gaussian_moments(features_fn(resample)), *frechet.gaussian_moments(features_fn(real))
  )
  assert d_resample == pytest.approx(want, rel=1e-12)
  assert d_resample > 0 and d_shifted > 20 * d_resample, (d_resample, d_shifted)


# ---- the contrastive feature space ---------------------------------------------------------------


@pytest.fixture(scope="module")
def contrastive_workdir(tmp_path_factory, shared_data_dir):
  """A tiny contrastive workdir (experiments/configs/contrastive.py:tiny) trained 2 steps, no evaluation
  until the final test one."""
  c = config_files.load(os.path.join(CONFIGS, "contrastive.py"), "tiny")
  c.data.data_dir = shared_data_dir
  c.update(dict(total_steps=2, eval_every=0, checkpoint_every=2, sample_examples=0))
  wd = str(tmp_path_factory.mktemp("frechet") / "contrastive")
  trainer.train_and_evaluate(c, wd, progress=False)
  return wd


def test_contrastive_features_are_the_model_image_embedding(contrastive_workdir):
  from PIL import Image

  features_fn = frechet.make_features_fn(contrastive_workdir, workdir_lib.load)
  t = workdir_lib.load(contrastive_workdir)
  d, size = int(t.config.model.embed_dim), int(t.config.data.image_size)
  assert (features_fn.dim, features_fn.image_size) == (d, size)
  sd = t.data.split("test")
  ids = np.flatnonzero(sd.task == TASK_CAPTION)
  ex = [sd.example(int(i)) for i in ids]
  batch = {k: np.stack([e[k] for e in ex]) for k in ("image", "target_out", "target_mask")}
  # The model's own call on the images with their real captions: its first output is the image embedding.
  apply = jax.jit(t.setup.model.apply)
  text = caption_tokens(batch["target_out"], batch["target_mask"])
  want = np.asarray(apply({"params": t.params}, batch["image"], *text)[0])
  images = batch["image"]
  n = len(images)
  assert images.shape[1:] == (size, size, 3) and n >= 3
  # More rows than one batch (config.eval_batch_size 8): the images repeat at other batch positions.
  rows = np.concatenate([np.arange(n)] * 3)
  feats = features_fn(images[rows])
  assert feats.shape == (len(rows), d) and feats.dtype == np.float32 and np.isfinite(feats).all()
  np.testing.assert_allclose(feats[:n], want, atol=1e-5)
  # Identical images give identical features wherever they sit in a batch.
  for k in (1, 2):
    np.testing.assert_allclose(feats[k * n : (k + 1) * n], feats[:n], atol=1e-6)
  assert np.abs(feats[0] - feats[1]).max() > 1e-3  # different images, different features
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)  # the normalised embedding

  # Images of another size are resized to the encoder's: here half the height (upsampled) and 1.5 times the
  # width (downsampled, with antialiasing). Reference: PIL's bilinear filter, channel by channel.
  other = np.stack([np.asarray(Image.fromarray(im).resize((3 * size // 2, size // 2), Image.NEAREST)) for im in images])

  def pil_resize(im):
    channels = [Image.fromarray(im[..., c].astype(np.float32) / 255) for c in range(3)]
    return np.stack([np.asarray(ch.resize((size, size), Image.BILINEAR)) for ch in channels], -1)

  want_other = np.asarray(apply({"params": t.params}, np.stack([pil_resize(im) for im in other]), *text)[0])
  got_other = features_fn(other)
  assert got_other.shape == (n, d)
  np.testing.assert_allclose(got_other, want_other, atol=1e-5)  # no antialiasing: 6e-4 off
  # frechet_between on this space: the real images against themselves are at 0, against their negatives not.
  assert frechet.frechet_between(features_fn, images, images) < 1e-8
  assert frechet.frechet_between(features_fn, 255 - images, images) > 0.05


# ---- config.evaluate.frechet_features ------------------------------------------------------------


def test_make_features_fn_errors(tmp_path, tiny_config):
  assert frechet.make_features_fn("") is None and frechet.make_features_fn(None) is None
  flag = r"config\.evaluate\.frechet_features="
  with pytest.raises(ValueError, match=flag + ".*not a directory"):
    frechet.make_features_fn(str(tmp_path / "missing"))
  with pytest.raises(ValueError, match=flag + ".*no config.json"):
    frechet.make_features_fn(str(tmp_path), workdir_lib.load)
  with pytest.raises(ValueError, match=flag + ".*needs load_workdir"):
    frechet.make_features_fn(str(tmp_path))
  with pytest.raises(ValueError, match=flag + ".*not a .safetensors file"):
    frechet.make_features_fn("inception_v3:" + str(tmp_path / "missing.safetensors"))
  with pytest.raises(ValueError, match=flag + ".*not a .safetensors file"):
    frechet.make_features_fn("inception_v3:")
  with pytest.raises(ValueError, match=flag + ".*not a directory"):
    frechet.make_features_fn("fid")
  vlm = tmp_path / "vlm"
  vlm.mkdir()
  (vlm / "config.json").write_text(json.dumps(json.loads(tiny_config.to_json_best_effort())))

  # A loader that reads only the config (a full load would need the run's checkpoint and data).
  def config_only(d):
    config = workdir_lib.load_config(d)
    return types.SimpleNamespace(config=config, setup=types.SimpleNamespace(kind=model_class(config.model)))

  with pytest.raises(ValueError, match=flag + ".*kind='vlm'.*contrastive"):
    frechet.make_features_fn(str(vlm), config_only)
  # A safetensors file that is not an Inception-V3 state dict.
  checkpoint.write(str(tmp_path / "other"), {"weight": np.ones((2, 2), np.float32)}, {})
  with pytest.raises(ValueError, match=flag + r".*no tensor 'Conv2d_1a_3x3\.bn\.bias' \(470 of the 470"):
    frechet.make_features_fn("inception_v3:" + str(tmp_path / "other" / checkpoint.SINGLE))


# ---- Inception-V3 --------------------------------------------------------------------------------


def torch_inception(variant):
  """Inception-V3 to pool3 in torch, written from torchvision's Inception3 and pytorch-fid's FIDInception
  blocks (torchvision itself is not a dependency), in eval mode."""
  import torch
  import torch.nn.functional as F
  from torch import nn

  fid = variant == "fid"

  class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
      super().__init__()
      self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
      self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
      return F.relu(self.bn(self.conv(x)))

  def avg(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=not fid)

  class A(nn.Module):
    def __init__(self, cin, pool_features):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
      self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
      self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
      b5 = self.branch5x5_2(self.branch5x5_1(x))
      b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(avg(x))], 1)

  class B(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
      self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
      self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
      return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class C(nn.Module):
    def __init__(self, cin, c7):
      super().__init__()
      self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
      self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
      bd = x
      for i in range(1, 6):
        bd = getattr(self, f"branch7x7dbl_{i}")(bd)
      return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(avg(x))], 1)

  class D(nn.Module):
    def __init__(self, cin):
      super().__init__()
      self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
      self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
      self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
      self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
      self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
      b3 = self.branch3x3_2(self.branch3x3_1(x))
      b7 = x
      for i in range(1, 5):
        b7 = getattr(self, f"branch7x7x3_{i}")(b7)
      return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)

  class E(nn.Module):
    def __init__(self, cin, last):
      super().__init__()
      self.last = last
      self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
      self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
      self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
      self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
      self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
      self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
      self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
      b3 = self.branch3x3_1(x)
      b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
      bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
      bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
      # pytorch-fid's FIDInceptionE_2 (Mixed_7c) max-pools; the other E blocks average.
      pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if fid and self.last else avg(x)
      return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
      self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
      self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
      self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
      self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
      self.Mixed_6a = B(288)
      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = C(768, 128), C(768, 160), C(768, 160), C(768, 192)
      self.Mixed_7a = D(768)
      self.Mixed_7b, self.Mixed_7c = E(1280, False), E(2048, True)
      self.fc = nn.Linear(2048, 10)  # a classifier head the feature network must ignore

    def forward(self, images01, size):
      """pytorch-fid's InceptionV3.forward: resize, scale to [-1, 1], blocks 0-3, global average pool."""
      x = F.interpolate(images01, size=(size, size), mode="bilinear", align_corners=False)
      x = 2 * x - 1
      x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
      x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
      for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
        x = getattr(self, f"Mixed_{name}")(x)
      return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)

  torch.manual_seed(0)
  net = Net()
  with torch.no_grad():  # random weights and batch-norm statistics that keep the activations of order 1
    for m in net.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
  return net.eval()


@pytest.mark.parametrize("variant", ["fid", "torchvision"])
def test_inception_matches_torch(tmp_path, variant):
  import torch

  from mmjax.pretrained.inception import inception_params, read_safetensors

  net = torch_inception(variant)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  assert "Mixed_7c.branch_pool.bn.num_batches_tracked" in state and "fc.weight" in state  # ignored on load
  checkpoint.write(str(tmp_path), state, {})
  path = str(tmp_path / checkpoint.SINGLE)
  assert read_safetensors(path)["Mixed_5b.branch1x1.conv.weight"].shape == (64, 192, 1, 1)
  bad = dict(state, **{"Mixed_6e.branch_pool.conv.weight": np.zeros((192, 768, 3, 3), np.float32)})
  with pytest.raises(ValueError, match=r"'Mixed_6e\.branch_pool\.conv\.weight' has shape \(192, 768, 3, 3\)"):
    inception_params(bad)
  size = 75  # the smallest input Inception-V3 takes: one call compiles in seconds on a CPU
  # config.evaluate.frechet_features names the weights file (at the network's own 299 x 299).
  assert frechet.make_features_fn(f"inception_v3:{path}").image_size == 299
  features_fn = frechet.inception_features(path, batch_size=2, image_size=size, variant=variant)
  rng = np.random.default_rng(6)
  # Resized to 75 x 75: the height upsampled, the width downsampled (without antialiasing, as torch).
  images = rng.integers(0, 256, size=(3, 40, 96, 3), dtype=np.uint8)
  got = features_fn(images)
  with torch.no_grad():
    want = net(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0, size).numpy()
  assert got.shape == (3, 2048) and got.dtype == np.float32 and np.isfinite(got).all()
  assert np.abs(want).max() > 0.1 and np.abs(want[0] - want[1]).max() > 0.01  # the reference is not degenerate
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
