"""The feature space of `<split>/t2i_frechet`: a contrastive (SigLIP) model of the text-to-image scenes.

  python experiments/train.py --workdir=/tmp/t2i_features --config=experiments/configs/t2i_features.py
  python experiments/train.py --workdir=/tmp/t2i --config=experiments/configs/t2i.py \
      --config.evaluate.frechet_features=/tmp/t2i_features
  python experiments/evaluate.py --workdir=/tmp/t2i --frechet_features=/tmp/t2i_features   # afterwards

No pretrained image network is available offline, so the Fréchet distance is measured in the image
tower of a contrastive model trained here on the same data (mmjax.evaluate.frechet): what its image
features separate is what the captions talk about (colours, shapes, places, relations), which is
what generated images should match. The data block is t2i.py's, so both runs read one dataset build;
the model is contrastive.py's at the default sizes with two changes for the 32-pixel scenes: 4x4-pixel
tokens (two stride-2 convolutions, 64 per image) and a two-layer text tower, so that "left of" and
"above" reach the loss through word order rather than a bag of words.

A distance is comparable only with distances measured in the same feature space: keep one features
workdir for the runs being compared. `:tiny` is the same for tests (seconds).
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "tiny"):
    raise ValueError(f"t2i_features config takes no argument or 'tiny'; got {arg!r}.")
  c = config_files.sibling(__file__, "contrastive", "default" if arg is None else "tiny")
  t2i = config_files.sibling(__file__, "t2i", arg)
  c.data = t2i.data
  c.model.text.max_len = c.data.max_target_len
  for key in ("batch_size", "eval_batch_size", "sample_examples", "log_every"):
    c[key] = t2i[key]
  c.eval_max_examples = 0  # embedding is cheap: score the whole split
  if arg == "tiny":
    c.total_steps, c.eval_every, c.checkpoint_every = 8, 4, 4
    c.model.vit.update(dict(patch_size=8, stem="patch", stem_channels=()))
    return c
  c.total_steps = 1500
  c.eval_every = 500
  c.checkpoint_every = 500
  c.optim.update(dict(learning_rate=1e-3, warmup_steps=100))
  # The conv stem: the feature space the results document's distances were measured in.
  c.model.vit.update(dict(patch_size=4, stem="conv", stem_channels=(32, 64)))
  c.model.text.depth = 2
  return c
