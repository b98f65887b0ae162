"""Inception-V3 weights from a torch state dict saved as one .safetensors file: the parameters of
mmjax.encoders.inception.InceptionV3 (its docstring: the layout, the conversion from pytorch-fid's .pth,
the variants). What mmjax.evaluate.frechet's Inception feature space loads."""

from __future__ import annotations

import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mmjax.encoders.inception import MIN_SIZE, TORCH_LEAF_NAMES, InceptionV3
from mmjax.pretrained import checkpoint


def torch_name(path: tuple[str, ...]) -> str:
  """The torch state-dict name of our parameter at `path` ("Mixed_5b", "branch1x1", "kernel")."""
  return ".".join(path[:-1]) + "." + TORCH_LEAF_NAMES[path[-1]]


def inception_params(tensors: Mapping[str, np.ndarray], where: str = "the state dict") -> dict:
  """Our parameter tree from a torch state dict (name -> array, module doc), float32; every tensor
  the network uses must be present with its shape (an error names one that is not)."""
  image = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(InceptionV3().init, jax.random.key(0), image)
  leaves = traverse_util.flatten_dict(shapes["params"])
  missing = [torch_name(path) for path in leaves if torch_name(path) not in tensors]
  if missing:
    raise KeyError(
      f"{where}: no tensor {missing[0]!r} ({len(missing)} of the {len(leaves)} the network needs are missing); "
      "expected an Inception-V3 state dict (module doc)."
    )
  flat = {}
  for path, leaf in leaves.items():
    name = torch_name(path)
    t = np.asarray(tensors[name], np.float32)
    if path[-1] == "kernel":
      t = t.transpose(2, 3, 1, 0)  # torch OIHW -> HWIO
    if t.shape != leaf.shape:
      raise ValueError(f"{where}: tensor {name!r} has shape {np.shape(tensors[name])}; the network needs {leaf.shape}.")
    flat[path] = t
  return traverse_util.unflatten_dict(flat)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of one .safetensors file, memory-mapped."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (Inception-V3 weights as one .safetensors file).")
  reader = checkpoint.Reader(path)
  return {name: reader.get(name) for name in reader.names()}


def load_params(path: str) -> dict:
  """Our parameter tree from an Inception-V3 state dict saved as the .safetensors file `path`."""
  return inception_params(read_safetensors(path), where=path)
