"""Run the flash-attention kernels under Triton's interpreter on host numpy arrays (CPU testing).

Triton decides between interpreter and compiler when a function is *decorated*: `@triton.jit`
reads TRITON_INTERPRET at that moment, and triton.language's own helpers (tl.cdiv, tl.max, ...) are
decorated when triton is first imported. So the variable has to be set before the first
`import triton` of the process; importing this module does that, and refuses (ImportError) when
triton was already imported in compiled mode, because mixing the two modes fails deep inside the
interpreter. Consequence: a process that imports this module runs every Triton kernel interpreted;
compiled kernels belong in another process (tests/test_triton_gpu.py and tests/test_triton_compile.py
run theirs in child processes).

The interpreter expects torch-like tensors; `HostTensor` gives a numpy array the handful of methods
it calls (data_ptr, untyped_storage, stride, dtype, ...). Kernels write straight into the numpy
buffers, so the interpreter's "copy to host and back" steps are no-ops.
"""

from __future__ import annotations

import os
import sys

if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
  raise ImportError(
    "mmjax.kernels.interpret must be imported before triton (it sets "
    "TRITON_INTERPRET=1, which triton only reads at import time)."
  )
os.environ["TRITON_INTERPRET"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mmjax.kernels import (
  flash_attention as _kernels,  # noqa: E402
  triton_call,  # noqa: E402
)


class HostTensor:
  """numpy array seen by the Triton interpreter as an already-on-host torch tensor."""

  def __init__(self, array: np.ndarray):
    self.array = array

  def data_ptr(self):
    return self.array.ctypes.data

  def untyped_storage(self):
    return self  # the interpreter only keys storages by data_ptr and calls cpu()/copy_ on them

  def cpu(self):
    return self

  def copy_(self, other):
    return self

  def new_empty(self, *args, **kwargs):
    return self

  def set_(self, *args):
    return self

  def storage_offset(self):
    return 0

  def size(self):
    return self.array.shape

  def stride(self, dim=None):
    strides = tuple(s // self.array.itemsize for s in self.array.strides)
    return strides if dim is None else strides[dim]

  @property
  def dtype(self):
    # Triton's type specialisation parses torch dtype names ("torch.float32" -> fp32).
    return "torch." + self.array.dtype.name


def _numpy_launch(kernel, grid, operands, outputs, meta, tiling, zeroed=()):
  del tiling  # num_warps / num_stages mean nothing to the interpreter
  del zeroed  # every output starts as zeros here
  # Zero-filled so that a store the kernel forgot shows up as a wrong value, not as garbage.
  outs = [np.zeros(shape, np.dtype(dtype)) for shape, dtype in outputs]
  wrap = lambda x: HostTensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
  kernel[grid](*map(wrap, operands), *map(HostTensor, outs), **meta)
  return outs


def _host(xs):
  return [np.asarray(x) for x in xs]


def forward_arrays(q, k, v, mask_arrays, cfg):
  """(out, lse) as numpy, from numpy-convertible inputs and prepared mask arrays."""
  q, k, v = _host([q, k, v])
  return _kernels.forward(_numpy_launch, q, k, v, _kernels.MaskArrays(*_host(mask_arrays)), cfg)


def backward_arrays(q, k, v, out, lse, dout, mask_arrays, cfg):
  q, k, v, out, lse, dout = _host([q, k, v, out, lse, dout])
  return _kernels.backward(_numpy_launch, q, k, v, out, lse, dout, _kernels.MaskArrays(*_host(mask_arrays)), cfg)


def _tiling(blocks):
  return None if blocks is None else _kernels.Tiling(*blocks)


def forward_interpret(q, k, v, mask=None, scale=None, softcap=None, block_q=16, block_k=16):
  """Interpreted forward: returns numpy (out [B, Sq, HQ, D], lse float32 [B, HQ, Sq])."""
  cfg, arrays = triton_call.prepare(q, k, mask, scale, softcap, _tiling((block_q, block_k)))
  return forward_arrays(q, k, v, arrays, cfg)


def backward_interpret(
  q,
  k,
  v,
  out,
  lse,
  dout,
  mask=None,
  scale=None,
  softcap=None,
  block_q=16,
  block_k=16,
  dkdv_blocks=None,
  dq_blocks=None,
  deterministic=False,
):
  """Interpreted backward: returns numpy (dq, dk, dv). dkdv_blocks / dq_blocks = (block_q, block_k)
  of the dK/dV and dQ kernels (default: the forward's blocks); deterministic picks the two-kernel
  backward over the atomic-dQ one."""
  fwd = (block_q, block_k)
  cfg, arrays = triton_call.prepare(
    q, k, mask, scale, softcap, _tiling(fwd), _tiling(dkdv_blocks or fwd), _tiling(dq_blocks or fwd), deterministic
  )
  return backward_arrays(q, k, v, out, lse, dout, arrays, cfg)


def _callback_forward(q, k, v, mask_arrays, cfg):
  b, sq, hq, _ = q.shape
  shapes = (jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, hq, sq), np.float32))
  return jax.pure_callback(lambda *a: tuple(forward_arrays(*a[:3], a[3:], cfg)), shapes, q, k, v, *mask_arrays)


def _callback_backward(q, k, v, out, lse, dout, mask_arrays, cfg):
  shapes = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v))
  return jax.pure_callback(
    lambda *a: tuple(backward_arrays(*a[:6], a[6:], cfg)), shapes, q, k, v, out, lse, dout, *mask_arrays
  )


_callback_attention = triton_call.make_attention(_callback_forward, _callback_backward)


def flash_attention_interpret_callback_for_tests(
  q, k, v, mask=None, scale=None, softcap=None, block_q=16, block_k=16, deterministic=False
):
  """TESTING ONLY: the same custom_vjp as mmjax.kernels.triton_call.flash_attention, but launching
  the interpreted kernels through jax.pure_callback, so jax.grad through it runs on a CPU."""
  t = _tiling((block_q, block_k))
  cfg, arrays = triton_call.prepare(q, k, mask, scale, softcap, t, t, t, deterministic)
  return _callback_attention(q, k, v, arrays, cfg)
