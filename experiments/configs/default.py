"""The README main job: a vision-language model trained from scratch on the embedded shapes data.

Sized for a 2-core CPU (about 15 minutes, dataset generation included); every key can be
overridden from the command line, e.g. `--config.total_steps=500 --config.model.vit.depth=2`.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 3000
  c.batch_size = 64
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

  c.model = ml_collections.ConfigDict()
  c.model.dtype = "float32"       # compute dtype; parameters stay float32
  c.model.attention_implementation = "auto"
  c.model.remat = "none"          # none | full | dots_saveable | ... (mmjax.layers.REMAT_POLICIES)
  c.model.scan_layers = False     # nn.scan over identical blocks (params gain a leading "layers" axis)
  c.model.freeze = ()             # top-level parameter subtrees that never update, e.g. ("image_encoder",)
  c.model.init_from = ml_collections.ConfigDict()  # {"image_encoder": "/path/to/workdir"}: copied at a fresh start
  # Small on purpose: the main job must train, evaluate and sample in about 15 minutes on 2 CPU
  # cores. A conv stem + sin-cos positions give the ViT object-level features and coordinates
  # from the start; the fusion layers (joint attention over image and question tokens) are where
  # the relational reasoning happens, so they get the depth.
  c.model.vit = ml_collections.ConfigDict(dict(width=64, depth=2, num_heads=4, mlp_dim=128, patch_size=16,
                                               posemb="sincos2d", stem="conv", stem_channels=(32, 64)))
  c.model.text = ml_collections.ConfigDict(dict(width=64, depth=1, num_heads=4, mlp_dim=128, max_len=32))
  c.model.fusion = ml_collections.ConfigDict(dict(name="cross_attention", cross_attention_every=1, gated=False,
                                                  fuse_depth=3, num_heads=4, mlp_dim=128))
  c.model.decoder = ml_collections.ConfigDict(dict(width=64, depth=1, num_heads=4, mlp_dim=128, max_len=64))

  c.optim = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=200, weight_decay=0.05,
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
