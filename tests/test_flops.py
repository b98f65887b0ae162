"""Model FLOPs from the jaxpr, against hand counts."""

import jax
import jax.numpy as jnp

from mmjax.train.flops import matmul_flops


def test_matmul_forward_and_grad_hand_counted():
  a, b = jnp.ones((3, 5)), jnp.ones((5, 7))
  assert matmul_flops(lambda a, b: a @ b, a, b) == 2 * 3 * 5 * 7
  # value_and_grad w.r.t. both: the forward product and one product per operand's cotangent.
  f = jax.value_and_grad(lambda a, b: (a @ b).sum(), argnums=(0, 1))
  assert matmul_flops(f, a, b) == 3 * 2 * 3 * 5 * 7


def test_batched_einsum_scan_and_jit_nesting():
  x = jax.ShapeDtypeStruct((4, 6, 8), jnp.float32)  # abstract inputs are enough
  w = jax.ShapeDtypeStruct((8, 10), jnp.float32)
  assert matmul_flops(lambda x, w: jnp.einsum("bsd,de->bse", x, w), x, w) == 2 * 4 * 6 * 8 * 10

  def body(c, _):
    return jax.jit(lambda c: jnp.tanh(c @ jnp.ones((8, 8))))(c), None

  f = lambda c: jax.lax.scan(body, c, None, length=5)[0]
  assert matmul_flops(f, jax.ShapeDtypeStruct((2, 8), jnp.float32)) == 5 * 2 * 2 * 8 * 8


def test_convolution_counts_window_and_input_features():
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)  # NHWC
  k = jax.ShapeDtypeStruct((4, 4, 3, 8), jnp.float32)  # HWIO, stride 4: a patch embedding
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  # 2 x 4 x 4 output positions x 8 features, each a 4 x 4 x 3 window.
  assert matmul_flops(conv, x, k) == 2 * (2 * 4 * 4 * 8) * (4 * 4 * 3)
