"""A seconds-sized variant of the default experiment for tests, notebooks and smoke runs."""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "default")
  c.total_steps = 6
  c.batch_size = 8
  c.eval_every = 3
  c.checkpoint_every = 3
  c.log_every = 1
  c.eval_batch_size = 8
  c.eval_max_examples = 16
  c.sample_examples = 4
  c.data.shapes.train_scenes = 24
  c.data.shapes.validation_scenes = 4
  c.data.shapes.test_scenes = 4
  c.model.vit.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=16))
  c.model.text.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
  c.model.fusion.update(dict(fuse_depth=1, num_heads=2, mlp_dim=64))
  c.model.decoder.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
  c.optim.warmup_steps = 2
  # The tests' reference model keeps the question in the cross-attention memory, one question per
  # image (the default's shared images and decoder-prefix question are tested on their own).
  c.model.fusion.text_as = "memory"
  c.data.questions_per_image = 1
  c.data.captions_with_questions = False
  c.data.task_weights.caption = 1.0
  if arg:
    raise ValueError(f"tiny config takes no argument; got {arg!r}.")
  return c
