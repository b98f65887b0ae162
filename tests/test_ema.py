"""Parameter EMA (config.ema_decay > 0): the train step keeps the average of the parameters it makes,
against a float64 numpy recomputation from the parameters of every step; the trained model is used
with it (workdir.load, evaluation); a resume that turns it on or off is refused."""

import os

import jax
import numpy as np
import pytest

from mmjax.train import state as state_lib, step as step_lib, trainer, workdir as workdir_lib
from mmjax.train.checkpoint import CheckpointMismatch

DECAY = 0.9


def _random_batch(config, rng):
  """Fresh random inputs of the pipeline's shapes (not zeros: every parameter gets a gradient)."""
  from mmjax.train.batches import dummy_batch

  batch = dummy_batch(config, config.batch_size)
  batch["image"] = rng.integers(0, 256, batch["image"].shape, dtype=np.uint8)
  for k in ("prompt", "target_in", "target_out"):
    batch[k] = rng.integers(4, 64, batch[k].shape).astype(np.int32)
  return batch


def test_train_step_keeps_the_parameters_average(tiny_config):
  tiny_config.ema_decay = DECAY
  setup = state_lib.make_setup(tiny_config, 512)
  state = state_lib.init_state(setup, jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = _random_batch(tiny_config, rng)
  step_fn = step_lib.make_train_step(setup, batch)
  init = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
  # The EMA starts at the initial parameters.
  for a, b in zip(jax.tree.leaves(state.ema), init):
    np.testing.assert_array_equal(np.asarray(a), b)
  expected = init
  for k in range(5):
    state, _ = step_fn(state, _random_batch(tiny_config, rng))
    params = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
    d = min(DECAY, (1 + k) / (10 + k))  # the warm-up: 0.1, 0.18, 0.25, ... then DECAY
    expected = [d * e + (1 - d) * p for e, p in zip(expected, params)]
  got = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.ema)]
  num = sum(np.sum((g - e) ** 2) for g, e in zip(got, expected))
  den = sum(np.sum(e**2) for e in expected)
  assert np.isfinite(num) and np.sqrt(num / den) < 1e-6
  # ... and it differs from the raw parameters (else the test could not tell them apart).
  assert any(not np.allclose(g, p) for g, p in zip(got, params))
  assert state.model_params is state.ema


def test_trained_model_is_the_average_and_resume_must_agree(tiny_config, tmp_path):
  wd = str(tmp_path / "run")
  tiny_config.ema_decay = DECAY
  tiny_config.total_steps = 2
  tiny_config.eval_every = 0
  tiny_config.eval_max_examples = 8
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  t = workdir_lib.load(wd)
  setup = state_lib.make_setup(t.config, t.data.tokenizer.vocab_size)
  from mmjax.train.checkpoint import Checkpointer

  ckpt = Checkpointer(wd, keep=3, save_interval_steps=1)
  _, state, _ = ckpt.restore(setup.abstract_state, t.config)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(t.params), jax.tree.leaves(state.ema)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(
    not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(*map(jax.tree.leaves, (t.params, state.params)))
  )
  tiny_config.ema_decay = 0.0
  tiny_config.total_steps = 3
  with pytest.raises(CheckpointMismatch, match="config.ema_decay"):
    trainer.train_and_evaluate(tiny_config, wd, progress=False)


def test_checkpoint_of_another_state_structure_is_kept(tiny_config, tmp_path):
  """A readable checkpoint whose train state differs from the one this code builds (here: restored into
  a state with an EMA, under the config it was written with) is an error, and is not set aside as if
  it were corrupt."""
  from mmjax.train.checkpoint import Checkpointer

  wd = str(tmp_path / "run")
  tiny_config.total_steps = 1
  tiny_config.eval_every = 0
  tiny_config.eval_max_examples = 8
  tiny_config.sample_examples = 0
  trainer.train_and_evaluate(tiny_config, wd, progress=False)
  with_ema = tiny_config.copy_and_resolve_references()
  with_ema.ema_decay = DECAY
  abstract = state_lib.make_setup(with_ema, workdir_lib.load(wd).data.tokenizer.vocab_size).abstract_state
  ckpt = Checkpointer(wd, keep=3, save_interval_steps=1)
  with pytest.raises(CheckpointMismatch, match="another structure"):
    ckpt.restore(abstract, tiny_config)
  ckpt.close()
  assert ckpt.latest_step() == 1 and not os.path.exists(os.path.join(wd, "checkpoints_unreadable"))
