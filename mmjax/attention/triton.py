""" "triton": our fused Triton kernel (mmjax.kernels), GPU only, through jax_triton.

Raises UnsupportedAttention instead of falling back, so a request for this kernel either runs it
or says why not. The kernel module is imported when first called: importing triton and jax_triton
costs time and, for jax_triton, fails on CPU-only installs.
"""

from __future__ import annotations

import importlib.util

import jax

from mmjax.attention.errors import UnsupportedAttention
from mmjax.kernels.mask import MaskSpec


def jax_triton_available() -> bool:
  return importlib.util.find_spec("jax_triton") is not None


def triton_attention(q, k, v, mask: MaskSpec | None, scale: float, softcap: float | None):
  if jax.default_backend() != "gpu":
    raise UnsupportedAttention(f"'triton' attention needs a CUDA GPU; default backend is {jax.default_backend()!r}.")
  if not jax_triton_available():
    raise UnsupportedAttention("'triton' attention needs the jax_triton package (not installed).")
  from mmjax.kernels import triton_call  # lowest floor; lazy only because jax_triton needs a GPU install

  try:
    return triton_call.flash_attention(q, k, v, mask, scale, softcap)
  except ValueError as e:  # shape limits of the kernel (head dim, ...)
    raise UnsupportedAttention(f"'triton' attention: {e}") from e
