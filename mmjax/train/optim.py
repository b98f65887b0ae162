"""AdamW with linear warmup + cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(c: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = min(int(c.warmup_steps), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=c.learning_rate,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=c.learning_rate * c.end_lr_fraction,
  )


def _decay_mask(params):
  # Decay matrices only: biases, norms, gates and position tables keep their scale.
  return jax.tree_util.tree_map_with_path(
    lambda path, p: p.ndim >= 2 and "posemb" not in jax.tree_util.keystr(path), params
  )


def make_optimizer(c: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(c.clip_norm),
    optax.adamw(
      learning_rate_schedule(c, total_steps), b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=_decay_mask
    ),
  )
