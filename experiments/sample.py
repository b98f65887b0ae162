r"""Samples from a trained workdir.

  python experiments/sample.py --workdir=DIR --image=scene.png --prompt="what shape is the red object?"
  python experiments/sample.py --workdir=DIR --image=scene.png --prompt="describe the image."
  python experiments/sample.py --workdir=DIR --split=test --num=16      # image grid + text report

Images of any mode are converted to RGB (transparency composited on white) and resized to the
model's image size with bicubic filtering. --sampler: greedy | temperature | top_k | top_p | beam.

A model with an audio encoder (config.model.audio: experiments/configs/speech_vqa.py, whose question
is only spoken, or av_matching.py) also hears a WAV file, one for all images or one per image:

  python experiments/sample.py --workdir=DIR --image=scene.png --audio=question.wav   # speech_vqa
  python experiments/sample.py --workdir=DIR --image=scene.png --audio=sound.wav \
      --prompt="does the sound match the image?"

Any PCM WAV works like an image of any mode and size: channels are averaged to mono and other
sample rates resampled to config.data.audio_sample_rate (as manifest "audio" files are); the clip
is then cut or zero-padded to the config.data.max_audio_seconds window by the data pipeline's own
function (a cut is logged). --prompt defaults to the fixed "answer the spoken question." of a model
trained with config.data.spoken_prompt. --audio without an audio encoder, or an audio encoder
without --audio, is an error naming the flag and config.model.audio.

A contrastive workdir (config.model.kind="contrastive") generates nothing: it ranks the --prompt
texts for every --image by embedding similarity, and --split writes a report of the caption each
image retrieves first.

  python experiments/sample.py --workdir=DIR --image=scene.png --prompt="a red circle" --prompt="a red square"

A grounding workdir (config.data.location_bins > 0, e.g. experiments/configs/grounding.py) finds
boxes with --task=detect: the prompt "red circle" asks the model "detect red circle" (several labels
separated by " ; ", "circle ; square"; a prompt starting with "detect " is sent as it is, and a
referring expression is one label). It prints each box found, its label and [y0, x0, y1, x1]
normalised and in pixels of the image file's own size, and draws the boxes on the image file as
given (upscaled when small) into --out, by default <image stem>_boxes.png beside each image:

  python experiments/sample.py --workdir=DIR --task=detect --image=scene.png --prompt="red circle"
  python experiments/sample.py --workdir=DIR --task=detect --image=scene.png --prompt="circle ; square" \
      --out=boxes.png

A --split report draws every grounding example's boxes on its image: predicted ones solid with
their labels, the reference's dashed.
"""

import os

from absl import app, flags, logging

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_IMAGE = flags.DEFINE_multi_string("image", [], "Image file(s); one prompt for all, or one prompt per image.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Question or captioning prompt (e.g. 'describe the image.').")
_AUDIO = flags.DEFINE_multi_string(
  "audio",
  [],
  "WAV file(s) a model with an audio encoder (config.model.audio) hears: one for all images, or one per image.",
)
_TASK = flags.DEFINE_enum(
  "task",
  "answer",
  ["answer", "detect"],
  "answer: print the generated text. detect: --prompt names what to find (a referring expression is one "
  "label); print and draw the boxes found (needs config.data.location_bins > 0).",
)
_OUT = flags.DEFINE_string(
  "out", None, "--task=detect with one --image: the PNG to draw the boxes in (default <image stem>_boxes.png)."
)
_SPLIT = flags.DEFINE_enum("split", None, ["train", "validation", "test"], "Write a report for a split instead.")
_NUM = flags.DEFINE_integer("num", 16, "Examples in a split report.")
_SAMPLER = flags.DEFINE_enum(
  "sampler", None, ["greedy", "temperature", "top_k", "top_p", "beam"], "Overrides the config's sampler."
)
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", None, "k for top_k.")
_TOP_P = flags.DEFINE_float("top_p", None, "p for top_p.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Beams for beam search.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SPLIT.value is None and not _IMAGE.value:
    raise app.UsageError("give --image (with --prompt) or --split.")
  if _TASK.value == "detect" and _SPLIT.value:
    raise app.UsageError(
      "--task=detect goes with --image: a --split report already draws the boxes of its grounding examples."
    )
  if _TASK.value == "detect" and not _PROMPT.value:
    raise app.UsageError("--task=detect: name what to find with --prompt, e.g. --prompt='red circle'.")
  if _OUT.value and _TASK.value != "detect":
    raise app.UsageError("--out goes with --task=detect (the PNG its boxes are drawn in).")
  if _OUT.value and len(_IMAGE.value) > 1:
    raise app.UsageError(
      f"--out names one PNG but there are {len(_IMAGE.value)} images: drop --out, and each image's boxes go to "
      "<image stem>_boxes.png beside it."
    )
  if _SPLIT.value and _AUDIO.value:
    raise app.UsageError("--audio goes with --image: a --split report hears each example's own audio.")
  if len(_AUDIO.value) not in (0, 1, len(_IMAGE.value)):
    raise app.UsageError(
      f"{len(_IMAGE.value)} images but {len(_AUDIO.value)} --audio files: give one for all images, or one per image."
    )
  import dataclasses

  import jax

  from mmjax.sample.generate import make_generate_fn, options_from_config
  from mmjax.sample.predict import answer, check_audio_flag
  from mmjax.train import workdir as workdir_lib

  logging.set_verbosity(logging.WARNING)
  if _IMAGE.value:  # from the config alone: a wrong flag fails before the model is loaded
    config = workdir_lib.load_config(_WORKDIR.value)
    check_audio_flag(config, _AUDIO.value)
    if _TASK.value == "detect":
      from mmjax.sample.boxes_image import check_detect_config, detection_prompt

      try:
        check_detect_config(config)
      except ValueError as e:
        raise app.UsageError(str(e)) from None
      for p in _PROMPT.value:
        detection_prompt(p)  # a prompt naming nothing fails before the model is loaded
  t = workdir_lib.load(_WORKDIR.value)
  if t.setup.kind.evaluator == "contrastive":
    if _TASK.value == "detect":
      raise app.UsageError("--task=detect: this workdir holds a contrastive model, which outputs no boxes.")
    _contrastive(t)
    return
  opts = options_from_config(t.config, t.data.tokenizer)
  changes = {
    k: v
    for k, v in dict(
      sampler=_SAMPLER.value,
      temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value,
      top_p=_TOP_P.value,
      beam_size=_BEAM.value,
    ).items()
    if v is not None
  }
  opts = dataclasses.replace(opts, **changes)
  gen = make_generate_fn(t.setup, opts)
  rng = jax.random.key(_SEED.value)
  if _SPLIT.value:
    from mmjax.evaluate.evaluator import evaluate_split

    metrics, preds = evaluate_split(
      t.data, _SPLIT.value, gen, t.params, t.config.eval_batch_size, rng, max_examples=_NUM.value
    )
    _report(t, preds)
    return
  prompts = _PROMPT.value
  if not prompts and t.config.data.spoken_prompt:
    from mmjax.data.examples import SPOKEN_PROMPT

    prompts = [SPOKEN_PROMPT]  # the one text prompt such a model was trained with: the question is the audio
  if len(prompts) == 1:
    prompts = prompts * len(_IMAGE.value)
  if len(prompts) != len(_IMAGE.value):
    raise app.UsageError(
      f"{len(_IMAGE.value)} images but {len(_PROMPT.value)} prompts: give one prompt, or one per image."
    )
  audio = _AUDIO.value * len(_IMAGE.value) if len(_AUDIO.value) == 1 else _AUDIO.value
  if _TASK.value == "detect":
    _detect(t, gen, prompts, rng, audio)
    return
  answers = answer(t, gen, _IMAGE.value, prompts, rng, audio_paths=audio)
  for image, prompt, text in zip(_IMAGE.value, prompts, answers):
    print(text if len(prompts) == 1 else f"{image}\t{prompt}\t{text}")


def _detect(t, gen, prompts, rng, audio):
  """--task=detect: asks for boxes, prints them and draws them on each image file as given."""
  from mmjax.sample import boxes_image
  from mmjax.sample.predict import answer, load_image

  asked = [boxes_image.detection_prompt(p) for p in prompts]
  outs = [_OUT.value] if _OUT.value else [boxes_image.boxes_path(p) for p in _IMAGE.value]
  if len(set(map(os.path.abspath, outs))) < len(outs):
    raise app.UsageError(
      "two --image files share a name stem in one folder, so their <image stem>_boxes.png would be one file: "
      "rename one, or sample them one at a time with --out."
    )
  # At the files' own sizes, to draw on what was given; read before generating, so a bad file fails fast.
  originals = [load_image(p, None) for p in _IMAGE.value]
  texts = answer(t, gen, _IMAGE.value, [q for q, _ in asked], rng, audio_paths=audio)
  locations = t.data.tokenizer.locations
  for path, original, (question, labels), text, out in zip(_IMAGE.value, originals, asked, texts, outs):
    height, width = original.shape[:2]
    found = boxes_image.named(locations.parse(text), labels)
    print(f"{path}: {question} -> {text}")
    for line in boxes_image.box_lines(found, height, width) or ["no boxes in the output"]:
      print(f"  {line}")
    scale = boxes_image.drawn_scale(height, width)
    boxes_image.draw_boxes(original, found, scale).save(out)
    print(f"wrote {out}" + (f" ({scale}x the image's size)" if scale > 1 else ""))


def _report(t, predictions):
  """Writes and prints the sample report of --split (its first --num predictions)."""
  from mmjax.sample.report import write_report

  png, txt = write_report(os.path.join(_WORKDIR.value, "samples"), t.data, _SPLIT.value, predictions, _NUM.value)
  print(open(txt).read())
  print(f"wrote {png} and {txt}")


def _contrastive(t):
  """Ranks texts for images, or writes a retrieval report for a split (a contrastive workdir)."""
  from mmjax.sample.predict import rank_texts

  given = [f"--{f.name}" for f in (_SAMPLER, _TEMPERATURE, _TOP_K, _TOP_P, _BEAM) if f.value is not None]
  if given:
    raise app.UsageError(
      f"{' '.join(given)}: this workdir holds a contrastive model, which ranks texts instead "
      "of generating them; drop the sampler flags."
    )
  if _SPLIT.value:
    metrics, preds = t.setup.make_evaluator(t.data)(t.params, _SPLIT.value, max_examples=_NUM.value)
    _report(t, preds)
    return
  if not _PROMPT.value:
    raise app.UsageError(
      "this workdir holds a contrastive model: give the texts to rank for the image(s) as "
      "--prompt (one or more), e.g. --prompt='a red circle' --prompt='a red square'."
    )
  for image, ranked in zip(_IMAGE.value, rank_texts(t, _IMAGE.value, _PROMPT.value)):
    print(image)
    for text, similarity in ranked:
      print(f"  {similarity:+.4f}\t{text}")


if __name__ == "__main__":
  cli.run(main)
