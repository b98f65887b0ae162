"""VQA from spoken questions: the question is only in the audio, the text prompt is always
"answer the spoken question." (data.spoken_prompt); the model hears the question through an audio
encoder (log-mel -> conv subsampling -> transformer) whose tokens join the fusion as "audio".

Built on fusion_flamingo (tiny sizes; `:default` for the default sizes, dataset and schedule
then unchanged): Flamingo's per-modality resampler masks the padding of questions shorter than
data.max_audio_seconds, which the cross-attention fusion cannot. Needs espeak-ng. The tiny
variant builds its dataset in well under 30 s and runs 200 steps in about a minute on 2 CPU cores.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "fusion_flamingo", arg)
  c.data.spoken_questions = True
  c.data.spoken_prompt = True
  c.data.captions = False  # captioning examples would hear nothing
  # No training-only questions: each would be synthesised as speech too, for a text-side trick
  # this experiment has not been measured with.
  c.data.max_audio_seconds = 3.5  # the longest spoken shapes question is about 3.3 s
  c.sampler.max_new_tokens = 8  # one-word answers
  text = c.model.text
  c.model.audio = ml_collections.ConfigDict(
    dict(
      width=text.width,
      depth=1,
      num_heads=text.num_heads,
      mlp_dim=text.mlp_dim,
      frontend="logmel",
      n_mels=40,
      sample_rate=c.data.get_ref("audio_sample_rate"),
      mask_padding=True,
    )
  )
  if arg is None:
    c.data.shapes.train_scenes, c.data.shapes.validation_scenes, c.data.shapes.test_scenes = 300, 4, 8
    c.total_steps = 200
    c.eval_every = c.checkpoint_every = 100
    c.log_every = 20
  return c
