"""Prefix-LM early fusion (PaliGemma): image + prompt tokens form the decoder's bidirectional prefix.

Built on tiny (pass `default` as the argument for the default sizes): `--config=...:default`.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, arg or "tiny")
  c.model.fusion = ml_collections.ConfigDict(dict(name="prefix_lm"))
  # The prefix (image tokens + max_prompt_len) shares the decoder's positions with the answer.
  n_image = (c.data.image_size // c.model.vit.patch_size) ** 2  # one token per ViT patch
  c.data.questions_per_image = 1  # one image per question: the image's tokens and the question form one prefix
  c.data.captions_with_questions = False
  c.model.decoder.max_len = n_image + c.data.max_prompt_len + c.data.max_target_len
  return c
