"""The default model with the question moved into the decoder and 4-pixel image tokens.

What it changes against default.py, and why (measured; see README "Measured results"):
- `model.fusion.text_as="prefix"`: the question leads the decoder's own sequence, so each question
  word reads the image through the decoder's cross-attention exactly as caption words do ("a red"
  -> "circle"); what captioning teaches transfers to the questions.
- `model.vit.patch_size=4`, `depth=0`: one token per 4x4 pixels straight from the conv stem (256
  tokens; an object covers a few of them), instead of 16x16 patches that mix several objects into
  one token. Only the decoder's few positions attend to them, so they stay cheap.
- `data.task_weights.caption=3`: about a quarter of the batches are captions, which name every
  object's shape and position (a dense perception signal) instead of one answer per question.

It costs about twice the default's time per step on a CPU, so it is not the 15-minute main job.
"""
import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "default")
  if arg:
    raise ValueError(f"question_prefix config takes no argument; got {arg!r}.")
  c.model.vit.patch_size = 4
  c.model.vit.depth = 0
  c.model.fusion.text_as = "prefix"
  c.model.fusion.fuse_depth = 0
  c.model.decoder.depth = 3
  c.model.decoder.max_len = c.data.max_prompt_len + c.data.max_target_len
  c.data.task_weights.caption = 3.0
  return c
