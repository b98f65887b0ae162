"""The Fréchet distance between generated and real images: Gaussians fitted to the features of each set,
compared in closed form. What the text-to-image evaluation reports as `<split>/t2i_frechet`.

  features_fn = make_features_fn(config.evaluate.frechet_features)   # None: no Fréchet metric
  d = frechet_between(features_fn, generated, real)                  # uint8 [N, H, W, 3], [M, H', W', 3]

The Fréchet (2-Wasserstein) distance between N(mu1, S1) and N(mu2, S2) is

  d = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2))

(Dowson & Landau 1982); with Inception-V3 pool3 features it is FID (Heusel et al. 2017). The distance
depends on the feature space, so a number is comparable only with numbers from the same features.

Feature spaces (`make_features_fn(spec)`, spec = config.evaluate.frechet_features):

  ""                          no Fréchet metric (None)
  a directory                 the image encoder of a contrastive run trained with mmjax on the same data
                              (config.model.kind="contrastive"; `contrastive_features`). No pretrained
                              network is available offline, and a contrastive model of the data knows
                              which objects, colours and places the captions talk about: the features
                              that text-to-image samples should match.
  "inception_v3:/path.safetensors"  Inception-V3 pool3 with weights the user supplies
                              (`inception_features`, mmjax.encoders.inception): FID proper.

Every features_fn maps uint8 images [B, H, W, 3] to float32 [B, D], jit-compiled, in fixed-size batches
(the last one zero-padded, so each size compiles once).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

FLAG = "config.evaluate.frechet_features"
INCEPTION_PREFIX = "inception_v3:"


# ---- the distance --------------------------------------------------------------------------------


def gaussian_moments(features) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], covariance [D, D]) of features [N, D] in float64; the covariance is the unbiased one
  (divided by N - 1), as in the reference FID code (np.cov)."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f"gaussian_moments: features must be [N, D]; got shape {x.shape}.")
  if x.shape[0] < 2:
    raise ValueError(f"gaussian_moments: a covariance needs at least 2 samples; got {x.shape[0]}.")
  if not np.isfinite(x).all():
    raise ValueError("gaussian_moments: the features hold NaN or Inf.")
  mu = x.mean(axis=0)
  centred = x - mu
  return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0
  from round-off clipped to 0)."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((S1 S2)^(1/2)) for symmetric PSD S1, S2.

  S1 S2 is not symmetric, and the general matrix square root of it (scipy.linalg.sqrtm, as the
  reference FID code uses) returns complex values or fails when the covariances are singular, which
  they are whenever there are fewer samples than feature dimensions. With A = S1^(1/2), the symmetric
  PSD M = A S2 A has the eigenvalues of S1 S2 (AB and BA share theirs: S1 S2 = A (A S2) and
  M = (A S2) A), so the trace is the sum of the square roots of M's eigenvalues, from two symmetric
  eigendecompositions; round-off below 0 is clipped to 0.
  """
  a = _psd_sqrt(sigma1)
  m = a @ sigma2 @ a
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (module doc), in float64.

  The covariances are symmetrised ((S + S^T) / 2) against round-off in their estimate. The result is
  a squared distance; a value below 0 is round-off (identical Gaussians) and returned as 0.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[0] if mu1.ndim == 1 else -1
  for name, mu, s in (("1", mu1, s1), ("2", mu2, s2)):
    if mu.ndim != 1 or s.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f"frechet_distance: mu{name} must be [D] and sigma{name} [D, D]; got {mu.shape} and {s.shape}.")
    if mu.shape[0] != d:
      raise ValueError(f"frechet_distance: the Gaussians have different dimensions ({d} and {mu.shape[0]}).")
    if not (np.isfinite(mu).all() and np.isfinite(s).all()):
      raise ValueError(f"frechet_distance: mu{name} or sigma{name} holds NaN or Inf.")
  s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
  diff = mu1 - mu2
  value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))
  return max(value, 0.0)


def moments(features_fn, images, where: str = "") -> tuple[np.ndarray, np.ndarray]:
  """gaussian_moments of features_fn's features of uint8 images [N, H, W, 3] (N >= 2): computed once
  for a set compared with several others (the real images against guided and unguided samples)."""
  return gaussian_moments(features_fn(_check_images(images, where or "the")))


def frechet_between(features_fn, generated, real) -> float:
  """The Fréchet distance between the Gaussians of features_fn's features of the generated images
  (uint8 [N, H, W, 3]) and of the real ones (uint8 [M, H', W', 3]); N, M >= 2."""
  return frechet_distance(*moments(features_fn, generated, "generated"), *moments(features_fn, real, "real"))


# ---- feature spaces ------------------------------------------------------------------------------


def _check_images(images, where: str) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f"{where} images must be uint8 [N, H, W, 3]; got {images.dtype} {images.shape}.")
  return images


def _batched(fn, rows: int, dim: int, image_size: int):
  """features(images uint8 [N, H, W, 3]) -> float32 [N, dim] from fn(batch of exactly `rows` images) ->
  [rows, dim]: the last batch is zero-padded and its padding dropped. The function carries `dim` and the
  `image_size` its network reads."""

  def features(images):
    images = _check_images(images, "features_fn:")
    out = []
    for lo in range(0, len(images), rows):
      chunk = images[lo : lo + rows]
      n = len(chunk)
      if n < rows:
        chunk = np.concatenate([chunk, np.zeros((rows - n,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(fn(chunk), np.float32)[:n])
    if not out:
      return np.zeros((0, dim), np.float32)
    return np.concatenate(out)

  features.dim, features.image_size = dim, image_size
  return features


def _unit_images(images, size: int, antialias: bool):
  """uint8 [B, H, W, 3] -> float32 in [0, 1] at size x size (bilinear; unchanged when already that size)."""
  x = images.astype(jnp.float32) / 255.0
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=antialias)
  return x


def _check_contrastive(trained, where: str) -> None:
  if trained.setup.kind.evaluator != "contrastive":
    raise ValueError(
      f"{where}it holds a config.model.kind={trained.config.model.kind!r} run; the Fréchet features are the "
      "image encoder of a contrastive run (config.model.kind='contrastive', experiments/configs/contrastive.py)."
    )


def contrastive_features(t, batch_size: int | None = None):
  """features_fn: the image embedding of a trained contrastive run `t` (mmjax.train.workdir.load's
  Trained: config, setup, params: its newest checkpoint, the EMA when it keeps one), float32 [B, embed_dim].

  The features are the model's own image embedding (ContrastiveModel's first output: pooled,
  projected and L2-normalised), not the pooled tower output before the projection: the embedding is
  the space the contrastive loss shapes (cosine similarity to captions), whereas the loss fixes the
  pooled vector only up to what the projection absorbs (any invertible linear change of it can be
  undone by the projection), so distances there are not what training defined. Taking the model's
  output also follows whatever heads the run configured (mean / class-token / attention pooling).
  The normalisation puts the features on the unit sphere, so distances here are bounded and not
  comparable to FID values. The text tower runs on a one-token dummy caption (its output is unused).

  Images of another size than the run's config.data.image_size (the size the encoder's positions were
  learned for) are resized to it, bilinearly with antialiasing when shrinking (jax.image.resize), as
  PIL's bilinear filter does. Runs under the workdir's own mesh (mmjax.sample.embed), in global batches of
  `batch_size` rows (default the run's config.eval_batch_size) rounded up to its data x fsdp shards;
  every process passes all images and receives all features.
  """
  from mmjax.sample.embed import embed_rows, global_batch, make_embed_fn

  _check_contrastive(t, "contrastive_features: ")
  size = int(t.config.data.image_size)
  embed_fn = make_embed_fn(t.setup)
  rows = global_batch(int(batch_size or t.config.eval_batch_size), embed_fn.multiple)
  prepare = jax.jit(lambda x: _unit_images(x, size, antialias=True))
  # One token per dummy caption: a zero-length caption would leave the text tower's attention fully masked.
  tokens, lengths = np.zeros((rows, 1), np.int32), np.ones((rows,), np.int32)

  def embed(chunk):
    return embed_rows(embed_fn, t.params, np.asarray(prepare(chunk)), tokens, lengths, rows)[0]

  return _batched(embed, rows, int(t.config.model.embed_dim), size)


def inception_features(weights_path: str, batch_size: int = 50, image_size: int = 299, variant: str = "fid"):
  """features_fn: Inception-V3 pool3 features [B, 2048] from the weights in the .safetensors file
  `weights_path` (mmjax.encoders.inception: layout, conversion, variants).

  As pytorch-fid: images are resized to image_size x image_size (299, the network's own size)
  bilinearly without antialiasing (torch's F.interpolate(align_corners=False), which FID numbers are
  made with), scaled to [-1, 1], and run through the network in float32. Runs on this process's
  default device; every process computes all features.
  """
  from mmjax.encoders.inception import FEATURES, InceptionV3
  from mmjax.pretrained.inception import load_params

  params = jax.device_put(load_params(weights_path))
  model = InceptionV3(variant=variant)
  run = jax.jit(lambda p, x: model.apply({"params": p}, _unit_images(x, image_size, antialias=False)))
  return _batched(lambda chunk: run(params, chunk), int(batch_size), FEATURES, image_size)


def make_features_fn(spec: str, load_workdir=None):
  """The features_fn that `spec` (config.evaluate.frechet_features) names (module doc), or None for "".

  load_workdir(directory) -> the trained run in it (mmjax.train.workdir.load: a floor above this one,
  so the caller passes it, as mmjax.train.workdir.make_evaluator does); needed for a directory spec."""
  spec = str(spec or "").strip()
  if not spec:
    return None
  where = f"{FLAG}={spec!r}: "
  if spec.startswith(INCEPTION_PREFIX):
    path = spec[len(INCEPTION_PREFIX) :]
    if not path.endswith(".safetensors") or not os.path.isfile(path):
      raise ValueError(f"{where}{path!r} is not a .safetensors file (Inception-V3 weights; mmjax.encoders.inception).")
    try:
      return inception_features(path)
    except (KeyError, ValueError) as e:  # not an Inception-V3 state dict: name the flag that chose it
      raise ValueError(f"{where}{e.args[0] if e.args else e}") from None
  if os.path.isdir(spec):
    if load_workdir is None:
      raise ValueError(f"{where}a workdir spec needs load_workdir (mmjax.train.workdir.make_evaluator passes it).")
    try:
      t = load_workdir(spec)
    except FileNotFoundError as e:
      raise ValueError(f"{where}{e}") from None
    _check_contrastive(t, where)
    return contrastive_features(t)
  raise ValueError(
    f"{where}not a directory; use a contrastive run's workdir, '{INCEPTION_PREFIX}/path/weights.safetensors', "
    "or '' (no Fréchet metric)."
  )
