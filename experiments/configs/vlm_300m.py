"""A ~300M-parameter VLM for GPU / TPU pods: 576 image tokens (384px, patch 16) and 1024 text tokens.

  ViT-B/16 12 x 768 (85M) + text encoder 4 x 768 with its 32k embedding (53M) + fusion 2 x 1024
  (27M) + decoder 8 x 1024 with cross-attention every layer and its 32k embedding (168M):
  333M parameters.
Not run on CPU. Pick the mesh on the command line, e.g. --config.mesh.fsdp=8 --config.mesh.data=-1.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "default")
  c.total_steps = 100_000
  c.batch_size = 256
  c.eval_every = 5000
  c.checkpoint_every = 1000
  c.log_every = 100
  c.eval_batch_size = 256
  c.data.image_size = 384
  c.data.max_prompt_len = 64
  c.data.max_target_len = 1024
  c.data.vocab_size = 32_000
  c.model.dtype = "bfloat16"
  c.model.remat = "dots_with_no_batch_dims_saveable"
  c.model.scan_layers = True
  c.model.image_encoder = "vit"  # (the default uses the object encoder)
  c.model.vit.update(dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16))
  c.model.text.update(dict(width=768, depth=4, num_heads=12, mlp_dim=3072, max_len=64))
  # The question joins the image in the fusion memory (not the main job's decoder prefix, which would
  # put 64 prompt positions in front of the 1024 target ones), one question per image.
  c.model.fusion.update(dict(text_as="memory", cross_attention_every=1, fuse_depth=2, num_heads=16, mlp_dim=4096))
  c.data.questions_per_image = 1
  c.data.captions_with_questions = False
  # Plain GELU MLPs keep the documented ~300M parameters (the main job's GEGLU would add a third
  # 1024 x 4096 matrix per decoder layer, about 50M).
  c.model.decoder.update(dict(width=1024, depth=8, num_heads=16, mlp_dim=4096, max_len=1024, mlp_activation="gelu"))
  c.optim.update(dict(learning_rate=3e-4, warmup_steps=2000))
  c.mesh.update(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  if arg:
    raise ValueError(f"vlm_300m config takes no argument; got {arg!r}.")
  return c
