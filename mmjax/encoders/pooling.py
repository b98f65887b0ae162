"""Pooling heads: a tower's tokens [B, N, D] -> one vector [B, D] per example.

  pool_tokens(x, "mean" | "cls" | "eos" | "last", lengths)   parameter-free
  MAPHead(num_heads, mlp_dim, ...)(x)                        SigLIP's attention-pooling head
  TokenHead(features, activation)(x)                         a dense (+ tanh) on the class token

The kinds are the ones pretrained checkpoints pool with: "mean" over the valid tokens (mmjax's own
contrastive towers), "cls" the first token (CLIP / ViT class token), "eos" the last valid token
(CLIP's text tower pools at its EOS, which ends every text: position lengths - 1), "last" the
sequence's final position whatever the lengths (SigLIP's text tower, whose texts are padded to a
fixed length and read in full), "map" multihead attention pooling with a learned probe (SigLIP's
image tower).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mmjax import layers

POOLS = ("mean", "cls", "eos", "last", "map")


def pool_tokens(x, kind: str, lengths=None, where: str = "pool"):
  """x [B, N, D] -> [B, D] by a parameter-free pooling `kind` (lengths [B]: valid tokens per row;
  None: all N)."""
  n = x.shape[1]
  if lengths is None:
    lengths = jnp.full((x.shape[0],), n, jnp.int32)
  if kind == "mean":
    valid = (jnp.arange(n)[None] < lengths[:, None]).astype(x.dtype)
    return (x * valid[..., None]).sum(1) / jnp.maximum(valid.sum(1, keepdims=True), 1.0)
  if kind == "cls":
    return x[:, 0]
  if kind == "eos":
    # An empty row (lengths 0, batch padding) reads token 0 rather than wrapping to the end.
    idx = jnp.clip(lengths.astype(jnp.int32) - 1, 0, n - 1)
    return jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0]
  if kind == "last":
    return x[:, -1]
  raise ValueError(f"{where}={kind!r}: the parameter-free poolings are 'mean', 'cls', 'eos', 'last' (see {POOLS}).")


class MAPHead(nn.Module):
  """Multihead attention pooling (SigLIP's vision head; Lee et al. 2019's PMA with one seed): a
  learned probe attends over the tokens, then a pre-norm residual MLP. Parameters: probe [1, D],
  attention/{query,key,value,out} (with biases, as torch's nn.MultiheadAttention), norm, mlp."""

  num_heads: int
  mlp_dim: int
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  norm_eps: float = 1e-6
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"MAPHead: width {d} is not divisible by num_heads={self.num_heads}.")
    probe = self.param("probe", layers.param_with_axes(nn.initializers.normal(0.02), (None, "embed")), (1, d))
    q = jnp.broadcast_to(probe.astype(x.dtype)[None], (b, 1, d))
    h = layers.MultiHeadAttention(
      self.num_heads,
      d // self.num_heads,
      implementation=self.implementation,
      dtype=self.dtype,
      use_bias=True,
      name="attention",
    )(q, kv=x)
    y = layers.Norm(self.dtype, "layernorm", self.norm_eps, name="norm")(h)
    h = h + layers.MLP(self.mlp_dim, self.dtype, self.mlp_activation, use_bias=True, name="mlp")(y)
    return h[:, 0]


TOKEN_HEAD_ACTIVATIONS = {"tanh": jnp.tanh, "none": lambda x: x}


class TokenHead(nn.Module):
  """A dense layer on the first (class) token, then `activation`: the pooler of ViT / BERT
  checkpoints (activation "tanh") or an image classifier (activation "none")."""

  features: int
  activation: str = "tanh"  # TOKEN_HEAD_ACTIVATIONS
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.activation not in TOKEN_HEAD_ACTIVATIONS:
      raise ValueError(f"TokenHead: activation={self.activation!r}; use one of {tuple(TOKEN_HEAD_ACTIVATIONS)}.")
    y = layers.Dense(self.features, ("embed",), (None,), dtype=self.dtype, name="dense")(x[:, 0])
    return TOKEN_HEAD_ACTIVATIONS[self.activation](y)
