"""BLIP-2 Q-Former: learned queries cross-attend to image tokens; fed to the decoder as a prefix.

Built on tiny (pass `default` as the argument for the default sizes). For the memory variant:
`--config.model.fusion.output=memory --config.model.fusion.cross_attention_every=1`.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, arg or "tiny")
  heads, mlp = c.model.fusion.num_heads, c.model.fusion.mlp_dim
  c.model.fusion = ml_collections.ConfigDict(
    dict(
      name="qformer",
      output="prefix",
      cross_attention_every=0,
      gated=False,
      num_queries=8,
      qformer_width=0,
      depth=1 if arg != "default" else 2,
      num_heads=heads,
      mlp_dim=mlp,
    )
  )
  c.data.questions_per_image = 1  # one image per question: the queries read the image and the question together
  c.data.captions_with_questions = False
  c.model.decoder.max_len = c.model.fusion.num_queries + c.data.max_prompt_len + c.data.max_target_len
  return c
