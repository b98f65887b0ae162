"""Model FLOPs counted from a function's jaxpr: every matrix product and convolution, by shape.

XLA's cost analysis cannot serve for MFU: on GPU it leaves out the cuBLAS and fused-kernel custom
calls (it reported 6.3e11 FLOPs for a step of 2.6e13 on an H100), and with rematerialisation
it counts the recomputed forward too. The jaxpr is the program as written, before any backend sees
it, so the count is the same on every platform. Scans multiply their body by the trip count; a
while loop's body (trip count unknown) and a cond's costliest branch count once.
"""

from __future__ import annotations

import math

import jax
from jax.extend import core


def _dot_general_flops(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
  rhs = eqn.invars[1].aval.shape  # kernel: output features, input features / groups, spatial...
  dn = eqn.params["dimension_numbers"]
  rhs_spec = dn.rhs_spec  # (out feature dim, in feature dim, spatial dims...)
  per_output = math.prod(rhs[d] for d in rhs_spec[1:])  # input features per group x window
  return 2 * math.prod(eqn.outvars[0].aval.shape) * per_output


def jaxpr_flops(jaxpr) -> int:
  """Matmul and convolution FLOPs of a (Closed)Jaxpr, sub-computations included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    elif name == "scan":
      total += eqn.params["length"] * jaxpr_flops(eqn.params["jaxpr"])
    elif name == "cond":
      total += max(jaxpr_flops(b) for b in eqn.params["branches"])
    elif name == "while":
      total += jaxpr_flops(eqn.params["body_jaxpr"]) + jaxpr_flops(eqn.params["cond_jaxpr"])
    else:
      for value in eqn.params.values():  # pjit, remat, custom_jvp/vjp calls, shard_map, ...
        if isinstance(value, (core.Jaxpr, core.ClosedJaxpr)):
          total += jaxpr_flops(value)
  return total


def matmul_flops(fn, *args, **kwargs) -> int:
  """FLOPs of the matrix products and convolutions of fn(*args) (arrays or ShapeDtypeStructs)."""
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))
