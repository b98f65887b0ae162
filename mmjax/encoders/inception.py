"""Inception-V3 up to its pool3 layer (2048-d per image): the feature network of the Fréchet Inception
Distance, for users who bring its weights (nothing here downloads them).

  params = mmjax.pretrained.inception.load_params("pt_inception.safetensors")  # torch state dict, safetensors
  feats = InceptionV3().apply({"params": params}, images)         # [B, H, W, 3] in [0, 1] -> [B, 2048]

The weights are a torch state dict in the layout that torchvision's `Inception3` and pytorch-fid's
`FIDInceptionA/C/E` share ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.bn.running_mean", ...),
saved as one .safetensors file (read by mmjax.pretrained.inception, no torch needed).
pytorch-fid's FID weights (pt_inception-2015-12-05-6726825d.pth) convert in three lines of torch:

  import torch, safetensors.torch
  sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
  safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, "pt_inception.safetensors")

Tensors the feature network does not use (the classifier `fc`, torchvision's `AuxLogits`, the
batch-norm `num_batches_tracked` counters) are ignored; a missing or misshapen one is an error naming it.

variant="fid" (default) is pytorch-fid's network, a port of the TensorFlow graph that FID was defined
with: its pooling branches average without the zero padding (count_include_pad=False) and the last
block (Mixed_7c) max-pools. variant="torchvision" pools as torchvision's Inception3 (padding counted,
average pooling in both last blocks) for torchvision's ImageNet weights. Both read images as pytorch-fid
does: [0, 1] scaled to [-1, 1] (torchvision's transform_input does the same to ImageNet-normalised
input). The image is used at its own size here (at least 75 x 75); pytorch-fid first resizes to 299 x 299
(mmjax.evaluate.frechet.inception_features does).

Every convolution is bias-free and followed by inference batch norm (eps 1e-3) and a ReLU (torch's
BasicConv2d); the batch norm is applied from its running statistics, never updated. Convolutions run at
Precision.HIGHEST so accelerators do not drop to reduced-precision (TF32) products: the features are
a reference measurement, compared across runs and code bases.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

FEATURES = 2048
VARIANTS = ("fid", "torchvision")
BN_EPS = 1e-3
MIN_SIZE = 75  # the smallest input whose feature map survives the five stride-2 stages

# Our parameter name -> the torch BasicConv2d tensor it is read from (kernel transposed from OIHW).
TORCH_LEAF_NAMES = {
  "kernel": "conv.weight",
  "scale": "bn.weight",
  "bias": "bn.bias",
  "mean": "bn.running_mean",
  "var": "bn.running_var",
}


def _pairs(k):
  return (k, k) if isinstance(k, int) else tuple(k)


class BasicConv(nn.Module):
  """torch's BasicConv2d: bias-free convolution, inference batch norm, ReLU."""

  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x):
    kh, kw = _pairs(self.kernel)
    ph, pw = _pairs(self.padding)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, x.shape[-1], self.features))
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    y = jax.lax.conv_general_dilated(
      x,
      kernel,
      (self.stride, self.stride),
      ((ph, ph), (pw, pw)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
    y = (y - mean) * (scale * jax.lax.rsqrt(var + BN_EPS)) + bias
    return nn.relu(y)


def _avg3(x, count_include_pad: bool):
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=count_include_pad)


def _max3(x, stride: int = 2, padding=0):
  p = ((padding, padding), (padding, padding))
  return nn.max_pool(x, (3, 3), (stride, stride), p)


class InceptionA(nn.Module):
  pool_features: int
  count_include_pad: bool

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name="branch1x1")(x)
    b5 = BasicConv(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg3(x, self.count_include_pad))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3(x)], -1)


class InceptionC(nn.Module):
  channels_7x7: int
  count_include_pad: bool

  @nn.compact
  def __call__(self, x):
    c = self.channels_7x7
    b1 = BasicConv(192, 1, name="branch1x1")(x)
    b7 = BasicConv(c, 1, name="branch7x7_1")(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv(c, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, 1, name="branch_pool")(_avg3(x, self.count_include_pad))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3(x)], -1)


class InceptionE(nn.Module):
  pool: str  # "avg_pad" (padding counted) | "avg" (padding not counted) | "max"

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name="branch1x1")(x)
    b3 = BasicConv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      -1,
    )
    bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      -1,
    )
    pooled = _max3(x, stride=1, padding=1) if self.pool == "max" else _avg3(x, self.pool == "avg_pad")
    bp = BasicConv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
  """images [B, H, W, 3] float in [0, 1] (H, W >= 75) -> pool3 features [B, 2048] (module doc)."""

  variant: str = "fid"

  @nn.compact
  def __call__(self, images):
    if self.variant not in VARIANTS:
      raise ValueError(f"InceptionV3: unknown variant {self.variant!r}; use one of {VARIANTS}.")
    if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 expects images [B, H, W, 3] with H, W >= {MIN_SIZE}; got {images.shape}.")
    fid = self.variant == "fid"
    x = 2.0 * images.astype(jnp.float32) - 1.0
    x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max3(x)
    x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max3(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features, count_include_pad=not fid, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, count_include_pad=not fid, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg" if fid else "avg_pad", name="Mixed_7b")(x)
    x = InceptionE("max" if fid else "avg_pad", name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))
