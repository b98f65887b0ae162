"""Freezing (zero updates) and init_from (copy a subtree from another run's params)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax.models.transfer import copy_subtrees, freeze, freeze_after, freeze_labels, init_from_workdirs


def params_tree(seed):
  rng = np.random.default_rng(seed)
  return {
    "image_encoder": {
      "a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
      "b": {"kernel": jnp.asarray(rng.normal(size=(2,)), jnp.float32)},
    },
    "decoder": {"w": jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
  }


def test_freeze_zeroes_updates_of_frozen_subtrees_only():
  params = params_tree(0)
  tx = freeze(optax.adamw(0.1, weight_decay=0.5), ("image_encoder",))
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
  jax.tree.map(np.testing.assert_array_equal, new["image_encoder"], params["image_encoder"])
  assert not np.allclose(new["decoder"]["w"], params["decoder"]["w"])
  assert freeze_labels(params, ("image_encoder/b",))["image_encoder"] == {"a": "trainable", "b": {"kernel": "frozen"}}
  # Nothing frozen: the same updates as the plain optimizer.
  plain, frozen_none = optax.sgd(1.0), freeze(optax.sgd(1.0), ())
  got, _ = frozen_none.update(grads, frozen_none.init(params), params)
  want, _ = plain.update(grads, plain.init(params), params)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  with pytest.raises(KeyError, match="no parameters under 'vision'"):
    freeze_labels(params, ("vision",))


def test_freeze_after_stops_a_subtree_after_n_updates():
  """SGD at rate 1 with gradient 1 everywhere, image_encoder stopping after 2 updates, image_encoder/b
  after 1 (the smaller step wins for a leaf under both): after 4 updates the decoder moved by 4, a by 2,
  b by 1 (hand-computed). The inner transform's clipping still sees every gradient."""
  params = params_tree(0)
  tx = freeze_after(optax.sgd(1.0), {"image_encoder": 2, "image_encoder/b": 1, "decoder": 10})
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  new = params
  for _ in range(4):
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  moved = jax.tree.map(lambda a, b: np.asarray(b - a), new, params)  # params - new: the steps taken
  np.testing.assert_array_equal(moved["decoder"]["w"], np.full(4, 4.0))
  np.testing.assert_array_equal(moved["image_encoder"]["a"], np.full((3, 2), 2.0))
  np.testing.assert_array_equal(moved["image_encoder"]["b"]["kernel"], np.full(2, 1.0))
  assert int(state.count) == 4
  clipped = freeze_after(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1.0)), {"image_encoder": 0})
  updates, _ = clipped.update(grads, clipped.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["decoder"]["w"]), -np.ones(4) / np.sqrt(6 + 2 + 4), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(updates["image_encoder"]["a"]), np.zeros((3, 2)))
  plain = optax.sgd(1.0)
  assert freeze_after(plain, {}) is plain  # nothing scheduled: the optimizer state keeps its layout
  with pytest.raises(KeyError, match="model.freeze_after: no parameters under 'vision'"):
    freeze_after(optax.sgd(1.0), {"vision": 3}).init(params)


def test_init_from_copies_one_subtree():
  params, other = params_tree(0), params_tree(1)
  loaded = []
  out = init_from_workdirs(params, {"image_encoder": "/run/a"}, lambda wd: loaded.append(wd) or other)
  assert loaded == ["/run/a"]
  jax.tree.map(np.testing.assert_array_equal, out["image_encoder"], other["image_encoder"])
  np.testing.assert_array_equal(out["decoder"]["w"], params["decoder"]["w"])
  bad = dict(other, image_encoder={"a": jnp.zeros((5, 2)), "b": other["image_encoder"]["b"]})
  with pytest.raises(ValueError, match="shape"):
    copy_subtrees(params, bad, ["image_encoder"])
