"""Audio-visual matching: "does the sound match the image?" -> yes / no, where the sound is the
scene's own object sounds (pitch from colour, timbre from shape, left to right) or, for
data.av_mismatch_fraction of the examples, another scene's (data.av_matching).

The audio model of speech_vqa (same sizes, `:default` for the default ones) on object sounds
instead of spoken questions, trained on the matching task alone (no questions, no captions).
Every sound is 1 s, so data.max_audio_seconds=1 leaves no padding.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "speech_vqa", arg)
  c.data.spoken_questions = False
  c.data.spoken_prompt = False
  c.data.shapes.object_sounds = True
  c.data.av_matching = True
  c.data.shapes.questions_per_type = ml_collections.ConfigDict(dict(attribute=0, spatial=0, relational=0))
  c.data.max_audio_seconds = 1.0
  if arg is None:
    c.data.shapes.validation_scenes, c.data.shapes.test_scenes = 16, 32  # one example per scene: enough to score
  return c
