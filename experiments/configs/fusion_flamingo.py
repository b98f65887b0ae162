"""Flamingo: Perceiver resampler latents read through tanh-gated cross-attention; prompt as prefix.

Built on tiny (pass `default` as the argument for the default sizes).
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, arg or "tiny")
  heads, mlp = c.model.fusion.num_heads, c.model.fusion.mlp_dim
  c.model.fusion = ml_collections.ConfigDict(
    dict(
      name="flamingo",
      cross_attention_every=1,
      gated=True,
      num_latents=8,
      resampler_depth=1 if arg != "default" else 2,
      num_heads=heads,
      mlp_dim=mlp,
      prompt_as="prefix",
    )
  )
  c.data.questions_per_image = 1  # one image per question: its memory is not shared between prompts
  c.data.captions_with_questions = False
  c.model.decoder.max_len = c.data.max_prompt_len + c.data.max_target_len
  return c
