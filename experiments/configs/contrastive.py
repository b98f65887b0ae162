"""Contrastive image-text model (SigLIP; `--config.model.loss=clip` for CLIP) trained by the same trainer.

  python experiments/train.py --workdir=/tmp/c --config=experiments/configs/contrastive.py
  python experiments/train.py --workdir=DIR --config=experiments/configs/contrastive.py:default  # default sizes

config.model.kind = "contrastive" builds mmjax.models.ContrastiveModel (image tower, text tower,
projections to model.embed_dim). It trains on the captioning examples only (one per shapes scene):
the text of an image is its caption's tokens (no BOS / EOS), and the loss of a step sees every pair
of the global batch. Evaluation (validation every eval_every steps on the first eval_max_examples
captions, test on all) writes <split>/retrieval_{i2t,t2i}_r{1,5,10} and <split>/zero_shot_accuracy
(mmjax/evaluate/contrastive.py).

Without an argument: the tiny model sizes on a small shapes dataset (1000 / 64 / 128 scenes), so a
20-step run takes about a minute on a 2-core CPU, dataset generation included. `:default`: the
default experiment's model sizes and data. `:tiny`: the tiny model with everything else (data,
batch, schedule, evaluation) exactly as in tiny.py, so that it sits next to the tiny fusion configs
in experiments/proj/shapes/compare_fusions.py --sizes=tiny (whose config check allows only model and
eval_batch_size to differ).
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "default", "tiny"):
    raise ValueError(f"contrastive config takes no argument, 'default' or 'tiny'; got {arg!r}.")
  c = config_files.sibling(__file__, "default" if arg == "default" else "tiny")
  m = c.model
  m.kind = "contrastive"
  m.loss = "siglip"  # siglip (pairwise sigmoid) | clip (softmax cross-entropy)
  m.embed_dim = 2 * m.vit.width  # joint embedding width (both towers are projected to it)
  # Heads (mmjax.models.contrastive): pooling per tower and projection kind; CLIP / SigLIP
  # checkpoints set their own (config.model.init_from_pretrained.contrastive).
  m.image_pool, m.text_pool, m.image_proj, m.text_proj = "mean", "mean", "linear", "linear"
  del m["fusion"], m["decoder"]  # the VLM's parts; a contrastive model has none
  m.text.max_len = c.data.max_target_len  # the text tower reads whole captions
  c.data.questions_per_image = 1  # (image, caption) pairs: one image per example
  c.data.captions_with_questions = False
  if arg == "tiny":
    return c
  c.eval_batch_size = 128
  if arg is None:
    c.batch_size = 64  # the negatives of every pair: the rest of the global batch
    c.total_steps = 300
    c.eval_every = 100
    c.checkpoint_every = 100
    c.log_every = 10
    c.eval_max_examples = 0  # the small validation split is scored whole
    c.sample_examples = 8
    c.optim.warmup_steps = 10
    c.data.shapes.train_scenes, c.data.shapes.validation_scenes, c.data.shapes.test_scenes = 1000, 64, 128
  return c
