"""Pretrained towers composed with a fusion family and fine-tuned on the user's data.

  --config=experiments/configs/pretrained.py:prefix_lm   PaliGemma: image tokens + prompt form the
                                                         decoder's bidirectional prefix
  --config=experiments/configs/pretrained.py:flamingo    Flamingo: a resampler read by new gated
                                                         cross-attention layers inside the LM
  --config=experiments/configs/pretrained.py:qformer     BLIP-2: learned queries between the towers

The checkpoints (Hugging Face directories on local disk) and the data come from the command line:

  python experiments/train.py --workdir=workdirs/paligemma \\
    --config=experiments/configs/pretrained.py:prefix_lm \\
    --config.model.init_from_pretrained.image_encoder=/ckpt/siglip \\
    --config.model.init_from_pretrained.decoder=/ckpt/gemma \\
    --config.data.manifest=coco_train.jsonl

The towers take their architecture (and the image size, and the decoder's tokenizer) from their
checkpoints (mmjax.pretrained.compose); this file says only what is new around them. Both towers
stay frozen except for LoRA adapters on the decoder's attention; the fusion, the prompt encoder and
(Flamingo) the new cross-attention layers train in full.
"""

import ml_collections

from mmjax.train import config as train_config

FUSIONS = {
  "prefix_lm": dict(name="prefix_lm"),
  "flamingo": dict(
    name="flamingo",
    cross_attention_every=1,
    gated=True,
    num_latents=16,
    resampler_depth=2,
    num_heads=4,
    mlp_dim=512,
    prompt_as="prefix",
  ),
  "qformer": dict(
    name="qformer",
    output="prefix",
    cross_attention_every=0,
    gated=False,
    num_queries=16,
    qformer_width=0,
    depth=2,
    num_heads=4,
    mlp_dim=512,
  ),
}
# What trains in full besides the adapters (mmjax.models.lora trainable_labels patterns): the new
# layers, i.e. the fusion, the prompt encoder and Flamingo's gated cross-attention inside the LM.
TRAINED = {
  "prefix_lm": ("fusion", "text_encoder"),
  "flamingo": ("fusion", "text_encoder", "cross_attention", "norm_cross", "cross_gate"),
  "qformer": ("fusion", "text_encoder"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  fusion = arg or "prefix_lm"
  if fusion not in FUSIONS:
    raise ValueError(f"pretrained config: argument {fusion!r}; use one of {sorted(FUSIONS)}.")
  c = train_config.base_config()
  c.total_steps = 2000
  c.batch_size = 32
  c.eval_every = 500
  c.eval_batch_size = 32
  c.eval_max_examples = 500
  c.optim.learning_rate = 3e-4
  c.data.questions_per_image = 1  # one image per prompt: every fusion family takes it
  c.data.max_prompt_len = 16
  c.data.max_target_len = 48
  c.model.fusion = ml_collections.ConfigDict(FUSIONS[fusion])
  # The prompt's own small encoder over the decoder's vocabulary (the towers' blocks come from the
  # checkpoints; these are placeholders until then).
  c.model.text = ml_collections.ConfigDict(dict(width=128, depth=1, num_heads=4, mlp_dim=256, max_len=32))
  c.model.vit = ml_collections.ConfigDict(dict(width=128, depth=2, num_heads=4, mlp_dim=256, patch_size=16))
  c.model.decoder = ml_collections.ConfigDict(dict(width=128, depth=2, num_heads=4, mlp_dim=256, max_len=512))
  c.model.init_from_pretrained = ml_collections.ConfigDict(dict(image_encoder="", decoder=""))
  c.model.freeze = ("image_encoder",)
  attention = ("decoder/**/self_attention/query", "decoder/**/self_attention/value")
  c.model.lora = ml_collections.ConfigDict(dict(targets=attention, rank=8, alpha=16.0, train=TRAINED[fusion]))
  return c
