"""The README main job: a vision-language model trained from scratch on the embedded shapes data.

Sized for a 2-core CPU (about 15 minutes, dataset generation included); every key can be
overridden from the command line, e.g. `--config.total_steps=500 --config.model.objects.depth=1`.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1900            # 12 min 51 s in all (README); set when a slower form of the neighbour tokens took 14 min 26 s
  c.batch_size = 256              # questions per step: 32 images x data.questions_per_image
  c.eval_every = 1000
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.log_every = 50
  c.eval_batch_size = 256
  c.eval_max_examples = 900      # periodic validation on the first 900 examples (0 = all); the final test uses all
  c.sample_examples = 8           # examples written to the sample report at the end
  c.skip_nonfinite = False        # True: skip updates whose loss/grads are NaN/Inf instead of stopping
  c.grad_accum_steps = 1          # microbatches per step (summed inside the jitted step with lax.scan)

  c.data = _data_config()
  c.data.questions_per_image = 8
  c.data.captions_with_questions = True
  # Training-only questions per train scene (never scored; see shapes.AUXILIARY_KINDS):
  # - spatial_lean: two spatial questions that ask only "on the left?" / "on the top?". Balanced
  #   yes/no spatial questions are an XOR of the object's side and the asked side, which gives
  #   reading the object's side no gradient: without the one-sided ones the (ViT) main job stayed
  #   at chance on spatial questions (test 0.50; 0.98 with).
  # - count: one "how many objects are <shape>s?" (the ViT job without it: 0.53 / 0.79 / 0.38,
  #   attribute / spatial / relational).
  # - side: one "is the <color> object on the left or the right?" -> left / right (likewise top /
  #   bottom); with the object encoder, "on the right?" otherwise lagged (0.667 at the end of one run).
  # - position: one "what color is the object at the <pos>?": "what color is the <shape> at the
  #   <pos>?" otherwise stalled where matching the shape alone leaves it (about 0.6).
  c.data.train_auxiliary_questions.spatial_lean = 2
  c.data.train_auxiliary_questions.count = 1
  c.data.train_auxiliary_questions.side = 1
  c.data.train_auxiliary_questions.position = 1

  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"       # compute dtype; parameters stay float32
  c.model.attention_implementation = "auto"
  c.model.remat = "none"          # none | full | dots_saveable | ... (mmjax.layers.REMAT_POLICIES)
  c.model.scan_layers = False     # nn.scan over identical blocks (params gain a leading "layers" axis)
  c.model.freeze = ()             # top-level parameter subtrees that never update, e.g. ("image_encoder",)
  c.model.init_from = ml_collections.ConfigDict()  # {"image_encoder": "/path/to/workdir"}: copied at a fresh start
  # Small on purpose: the main job must train, evaluate and sample in about 15 minutes on 2 CPU
  # cores, so every choice below buys examples per second or learning per example (measured; see
  # README "Measured results"):
  # - 8x8-pixel tokens (64 per image; an object, about 9 px, falls mostly in one) from three
  #   stride-2 convolutions, with each pixel's x, y as extra input channels so that a token knows
  #   where inside its patch the object sits ("is the red object on the left?").
  # - The question leads the decoder's own sequence (fusion text_as="prefix"), so the memory is the
  #   image alone: one image serves all of its questions (data.questions_per_image) and its
  #   caption (data.captions_with_questions), each step reading 32 images once for 256 questions
  #   and 32 captions. Captions name every object's shape and position: the dense signal that
  #   teaches the model to see; question words then find "the red object" the way caption words do.
  # - Gated (GEGLU) decoder MLPs: an answer often hangs on the product of two things the decoder
  #   holds ("the circle" and "at the top left"). Hidden width 128 = 2/3 of a 192-wide GELU MLP
  #   keeps its parameters and FLOPs (at 192 the step is 16% slower: over the 15-minute budget).
  c.model.vit = ml_collections.ConfigDict(dict(width=96, depth=2, num_heads=4, mlp_dim=192, patch_size=8,
                                               posemb="sincos2d", stem="conv", stem_channels=(32, 64, 96),
                                               coord_channels=True))
  # The image enters as one token per object (mmjax/encoders/objects.py): pixels grouped by colour
  # into slots, each slot's shape features, exact centroid and size, and relation layers whose
  # two geometric heads read the nearest and the furthest *other* object; the decoder sees each
  # object's token before and after the relation layers (clean_tokens) and each object paired with
  # its nearest and its furthest other object (neighbour_tokens: "what shape is the object closest
  # to the red one?" went from 0.56 to 0.98 on test). README "Measured results"
  # has how each piece was measured, and the ViT runs (`--config.model.image_encoder=vit`) it
  # replaced.
  c.model.image_encoder = "mmjax.encoders.objects:ObjectEncoder"  # fields in model.objects; "vit": model.vit
  c.model.objects = ml_collections.ConfigDict(dict(
      num_slots=7,                       # six objects and the background
      width=96, feature_dim=32, feature_stride=2, iterations=3, sharpness=20.0, depth=2, num_heads=4, mlp_dim=192,
      slopes=(300.0, -100.0, 15.0, 0.0),  # per head, on squared distance: near, far, gently near, none
      self_excluding_heads=2, geometric_heads=2,  # the near and far heads: distance only, never self
      position_frequencies=4, mass_prior=-8.0, clean_tokens=True, neighbour_tokens=True))
  c.model.text = ml_collections.ConfigDict(dict(width=96, depth=0, num_heads=4, mlp_dim=192, max_len=32))
  c.model.fusion = ml_collections.ConfigDict(dict(name="cross_attention", cross_attention_every=1, gated=False,
                                                  text_as="prefix", fuse_depth=0, num_heads=4, mlp_dim=192))
  c.model.decoder = ml_collections.ConfigDict(dict(width=96, depth=2, num_heads=4, mlp_dim=128, mlp_activation="geglu",
                                                   max_len=c.data.max_prompt_len + c.data.max_target_len))

  c.optim = ml_collections.ConfigDict(dict(learning_rate=2e-3, warmup_steps=100, weight_decay=0.05,
                                           b1=0.9, b2=0.98, clip_norm=1.0, end_lr_fraction=0.02))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  c.sharding = ml_collections.ConfigDict(dict(rules=()))

  c.sampler = ml_collections.ConfigDict(dict(name="greedy", temperature=1.0, top_k=0, top_p=1.0, beam_size=1,
                                             max_new_tokens=0))  # 0 = data.max_target_len
  if arg:
    raise ValueError(f"default config takes no argument; got {arg!r}.")
  return c


def _data_config() -> ml_collections.ConfigDict:
  from mmjax.data import default_data_config  # the data module owns its keys and defaults
  return default_data_config()
