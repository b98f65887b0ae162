"""The README main job: the general vision-language model (ViT + text encoder -> cross-attention
fusion -> causal decoder) trained from scratch on the embedded shapes data.

Nothing here knows that data: it is the model a user gets with `--config.data.manifest=...`.
Sized for a 2-core CPU (within 15 minutes, dataset generation included); every key can be
overridden from the command line, e.g. `--config.total_steps=500 --config.model.vit.depth=1`.
"""

import ml_collections

from mmjax.projects.shapes import data as shapes_data
from mmjax.train import config as train_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"default config takes no argument; got {arg!r}.")
  c = train_config.base_config()  # every key the library reads (mmjax/train/config.py); the main job's values:
  c.total_steps = 1500  # about 3.4 steps/s on 2 CPU cores: inside the 15-minute budget (docs/results.md)
  c.batch_size = 256  # questions per step: 32 images x data.questions_per_image
  c.eval_every = 750
  c.eval_batch_size = 256
  c.eval_max_examples = 900  # periodic validation on the first 900 examples; the final test uses all

  # The embedded data: the shapes project's procedural scenes (config.data.source and its
  # config.data.shapes block). A non-empty --config.data.manifest replaces it with the user's data.
  c.data = shapes_data.default_data_config()
  c.data.questions_per_image = 8
  c.data.captions_with_questions = True

  # Small on purpose: the main job must train, evaluate and sample in about 15 minutes on 2 CPU
  # cores, so every choice below buys examples per second or learning per example (measured; see
  # docs/results.md and the shapes project's README):
  # - 8x8-pixel tokens (64 per image; an object, about 9 px, falls mostly in one) from three
  #   stride-2 convolutions, with each pixel's x, y as extra input channels so that a token knows
  #   where inside its patch the object sits ("is the red object on the left?"). The hypercolumn
  #   stem adds to each token linear embeddings of its patch's pixels and of every intermediate
  #   conv map under it: the convolutions alone lose colour and outline detail that the words
  #   need, and the model then sits on a loss plateau for a seed-dependent time (test attribute
  #   accuracy 0.899 against 0.539 over three seeds, docs/results.md).
  # - The question leads the decoder's own sequence (fusion text_as="prefix"), so the memory is the
  #   image alone: one image serves all of its questions (data.questions_per_image) and its
  #   caption (data.captions_with_questions), each step reading 32 images once for 256 questions
  #   and 32 captions. Captions name every object's shape and position: the dense signal that
  #   teaches the model to see; question words then find "the red object" the way caption words do.
  # - Gated (GEGLU) decoder MLPs: an answer often hangs on the product of two things the decoder
  #   holds ("the circle" and "at the top left"). Hidden width 128 = 2/3 of a 192-wide GELU MLP
  #   keeps its parameters and FLOPs (at 192 the step is 16% slower: over the 15-minute budget).
  c.model.vit = ml_collections.ConfigDict(
    dict(
      width=96,
      depth=2,
      num_heads=4,
      mlp_dim=192,
      patch_size=8,
      posemb="sincos2d",
      stem="hypercolumn",
      stem_channels=(32, 64, 96),
      coord_channels=True,
    )
  )
  c.model.image_encoder = "vit"  # any registry name (mmjax.registry) or "module:Class"; fields in model.vit
  c.model.text = ml_collections.ConfigDict(dict(width=96, depth=0, num_heads=4, mlp_dim=192, max_len=32))
  c.model.fusion = ml_collections.ConfigDict(
    dict(
      name="cross_attention",
      cross_attention_every=1,
      gated=False,
      text_as="prefix",
      fuse_depth=0,
      num_heads=4,
      mlp_dim=192,
    )
  )
  c.model.decoder = ml_collections.ConfigDict(
    dict(
      width=96,
      depth=2,
      num_heads=4,
      mlp_dim=128,
      mlp_activation="geglu",
      max_len=c.data.max_prompt_len + c.data.max_target_len,
    )
  )

  c.optim.learning_rate = 2e-3
  return c
