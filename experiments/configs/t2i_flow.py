"""Text-to-image by flow matching (a DiT conditioned on a text encoder) trained by the same trainer.

  python experiments/train.py --workdir=/tmp/t2i --config=experiments/configs/t2i_flow.py
  python experiments/train.py --workdir=DIR --config=experiments/configs/t2i_flow.py:tiny  # seconds, for tests

config.model.kind = "t2i_flow" builds mmjax.models.text_to_image.TextToImageFlow: the caption's tokens
through a TextEncoder (model.text), a DiT (model.dit) predicting the flow-matching velocity of the
image scaled to [-1, 1]. It trains on the captioning examples only (one per scene of the shapes data's
text-to-image variant: "a red circle to the left of a blue square"); a tenth of the captions are
dropped to the null condition so that the sampler can use classifier-free guidance.

Evaluation (validation every eval_every steps on the first eval_max_examples captions, test on all)
generates an image per caption with config.sampler (Heun, 24 steps, guidance 3) and without guidance,
and scores them with the shapes data's exact image parser: <split>/t2i_{object,scene,relation}_accuracy
and the same with _noguidance (mmjax/evaluate/text_to_image.py). The test split holds the held-out
(colour, shape) pairs and relations, so its scores measure composition.

Sizes for a 2-core CPU: 32x32 images in 4x4 patches (64 tokens), a 128-wide DiT of depth 4. Measured
at about 1.7 steps/s (batch 64), so the 3000 steps take about half an hour; the image quality this
reaches is not measured yet.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "tiny"):
    raise ValueError(f"t2i_flow config takes no argument or 'tiny'; got {arg!r}.")
  c = config_files.sibling(__file__, "default")
  c.total_steps = 3000
  c.batch_size = 64
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.log_every = 50
  c.eval_batch_size = 64
  c.eval_max_examples = 128  # generation is the costly part of an evaluation: validate on a sample
  c.sample_examples = 8
  c.optim.update(dict(learning_rate=1e-3, warmup_steps=200, weight_decay=0.0))

  d = c.data
  d.image_size = 32  # objects of about 5 pixels: the scorer's calibration covers 32..256
  d.max_target_len = 24  # the longest three-object caption with a relation is about 20 tokens
  d.questions_per_image = 1  # (image, caption) pairs: one image per example
  d.captions_with_questions = False
  d.shapes.t2i.enabled = True
  d.shapes.train_scenes, d.shapes.validation_scenes, d.shapes.test_scenes = 20000, 256, 512

  m = c.model
  m.kind = "t2i_flow"
  del m["fusion"], m["decoder"], m["vit"]  # the VLM's parts; this kind has a DiT instead
  m.text = ml_collections.ConfigDict(dict(width=128, depth=2, num_heads=4, mlp_dim=256, max_len=d.max_target_len))
  m.dit = ml_collections.ConfigDict(
    dict(width=128, depth=4, num_heads=4, mlp_dim=512, patch_size=4, posemb="sincos2d", conditioning="cross_attention")
  )
  m.t_sampling = "logit_normal"  # SD3: most steps at intermediate noise levels
  m.t_mean, m.t_std = 0.0, 1.0
  m.cond_dropout = 0.1  # the null-condition rows classifier-free guidance needs
  # Latent flow matching: the fields of mmjax.encoders.autoencoder.ImageAutoencoder (trained in the same
  # run, its reconstruction loss weighted by autoencoder_weight); None: the DiT runs on pixels.
  # experiments/configs/t2i_flow_latent.py sets one.
  m.autoencoder = None
  m.autoencoder_weight = 1.0

  c.sampler.update(dict(guidance=3.0, steps=24, method="heun"))
  c.ema_decay = 0.995  # evaluation and sampling read the average of the last ~200 steps' weights

  if arg == "tiny":
    c.total_steps = 8
    c.batch_size = 16
    c.eval_every = 4
    c.checkpoint_every = 4
    c.log_every = 1
    c.eval_batch_size = 16
    c.eval_max_examples = 8
    c.sample_examples = 4
    c.optim.update(dict(learning_rate=2e-3, warmup_steps=1))
    d.shapes.train_scenes, d.shapes.validation_scenes, d.shapes.test_scenes = 64, 8, 16
    m.text.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64))
    m.dit.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8))
    c.sampler.update(dict(steps=4, method="heun"))
  return c
