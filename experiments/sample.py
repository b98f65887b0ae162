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

A text-to-image workdir (an evaluator "t2i" kind: experiments/configs/t2i.py, t2i_flow.py,
t2i_tokens.py) draws instead of reading: --num images (default 4) for every --prompt, written as one PNG
grid with one row per prompt (in flag order) and --num columns, 2-pixel white gaps between cells, each
image upscaled by nearest neighbour to at least 128 pixels a side (a 32x32 sample shows 4x). The grid
goes to --out, by default t2i_grid.png in the current directory, and the path is printed. --guidance and
--steps override config.sampler (as do --sampler, --temperature, --top_k, --top_p, --candidates (the
likeliest of that many drawings per image), --plausibility (guidance among the plausible indices) and,
for a masked t2i_tokens model, --choice_temperature for a kind whose sampler takes them; a flag the
kind's sampler does not take is an error). The same --seed, prompts, --num and flags give the same
images. A prompt is tokenized as the training captions were; an empty one, one longer than the model's
text input (config.model.text.max_len for t2i_flow) or one with words the tokenizer only knows as its
unknown token is an error naming it. --image is an error: such a model draws images, it does not read
them. --split writes the evaluator's report (each caption's generated image with its scores, guided and
unguided) to <workdir>/samples and prints the metrics.

  python experiments/sample.py --workdir=DIR --prompt="a red circle to the left of a blue square" --num=8 \
      --prompt="a green triangle above a red square" --guidance=3 --steps=32 --seed=0 --out=grid.png
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
  "out",
  None,
  "--task=detect with one --image: the PNG to draw the boxes in (default <image stem>_boxes.png). A "
  "text-to-image workdir: the PNG grid of the images drawn for --prompt (default t2i_grid.png).",
)
_SPLIT = flags.DEFINE_enum("split", None, ["train", "validation", "test"], "Write a report for a split instead.")
_NUM = flags.DEFINE_integer(
  "num", None, "Examples in a split report (default 16); a text-to-image workdir: images per --prompt (default 4)."
)
_SAMPLER = flags.DEFINE_enum(
  "sampler", None, ["greedy", "temperature", "top_k", "top_p", "beam"], "Overrides the config's sampler."
)
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature.")
_TOP_K = flags.DEFINE_integer("top_k", None, "k for top_k.")
_TOP_P = flags.DEFINE_float("top_p", None, "p for top_p.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Beams for beam search.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_GUIDANCE = flags.DEFINE_float(
  "guidance", None, "A text-to-image workdir: classifier-free guidance scale (1 = none); default config.sampler's."
)
_STEPS = flags.DEFINE_integer("steps", None, "A text-to-image workdir: sampler steps; default config.sampler's.")
_CANDIDATES = flags.DEFINE_integer(
  "candidates", None, "A causal t2i_pixels / t2i_tokens workdir: keep the likeliest of this many drawings per image."
)
_PLAUSIBILITY = flags.DEFINE_float(
  "plausibility",
  None,
  "A t2i_pixels / t2i_tokens workdir: guide only among the indices the conditional model gives at least this "
  "share of its top probability (0: all).",
)
_CHOICE_TEMPERATURE = flags.DEFINE_float(
  "choice_temperature", None, "A masked (MaskGIT) t2i_tokens workdir: noise on which codes are fixed first."
)

T2I_GRID = "t2i_grid.png"  # --out of a text-to-image workdir
T2I_IMAGES = 4  # --num of a text-to-image workdir: images per prompt
REPORT_EXAMPLES = 16  # --num of a --split report
T2I_CELL = 128  # the least pixels a side of a grid cell: small samples are upscaled to it


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  t2i_config = _text_to_image_config()
  if t2i_config is not None:
    _text_to_image(t2i_config)
    return
  given = [f"--{f.name}" for f in (_GUIDANCE, _STEPS, _CANDIDATES, _PLAUSIBILITY) if f.value is not None]
  if given:
    raise app.UsageError(f"{' '.join(given)}: these go with a text-to-image workdir; this one's model draws no images.")
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
      t.data, _SPLIT.value, gen, t.params, t.config.eval_batch_size, rng, max_examples=_num(REPORT_EXAMPLES)
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

  png, txt = write_report(
    os.path.join(_WORKDIR.value, "samples"), t.data, _SPLIT.value, predictions, _num(REPORT_EXAMPLES)
  )
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
    metrics, preds = t.setup.make_evaluator(t.data)(t.params, _SPLIT.value, max_examples=_num(REPORT_EXAMPLES))
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


def _num(default: int) -> int:
  """--num, or the default of the path that reads it (unset: None)."""
  return default if _NUM.value is None else _NUM.value


def _text_to_image_config():
  """The workdir's config when its model draws images (evaluator "t2i"), else None; read from the config
  alone, so that this path's flag errors come before the model is loaded."""
  from mmjax.models import model_class
  from mmjax.train import workdir as workdir_lib

  if not os.path.exists(os.path.join(_WORKDIR.value, "config.json")):
    return None  # not a workdir: the other paths name what is missing
  config = workdir_lib.load_config(_WORKDIR.value)
  return config if getattr(model_class(config.model), "evaluator", None) == "t2i" else None


def _text_to_image(config):
  """A text-to-image workdir: --num images per --prompt as one PNG grid, or the evaluator's --split report."""
  if _IMAGE.value:
    raise app.UsageError(
      "--image: this workdir holds a text-to-image model, which draws images from --prompt instead of reading "
      "them; drop --image."
    )
  if _AUDIO.value:
    raise app.UsageError("--audio: this workdir holds a text-to-image model, which reads captions only; drop --audio.")
  if _TASK.value == "detect":
    raise app.UsageError("--task=detect: this workdir holds a text-to-image model, which outputs no boxes.")
  if _SPLIT.value and (_PROMPT.value or _OUT.value):
    raise app.UsageError(
      f"{'--prompt' if _PROMPT.value else '--out'} goes without --split: a --split report draws the split's own "
      "captions into <workdir>/samples."
    )
  if not _SPLIT.value and not _PROMPT.value:
    raise app.UsageError(
      "this workdir holds a text-to-image model: give the captions to draw as --prompt (one or more), e.g. "
      "--prompt='a red circle above a blue square', or --split for the evaluator's report."
    )
  num = _num(REPORT_EXAMPLES if _SPLIT.value else T2I_IMAGES)
  if num < 1:
    raise app.UsageError(f"--num={num} must be >= 1.")
  out = _OUT.value or T2I_GRID
  if not _SPLIT.value:
    if not out.lower().endswith(".png"):
      raise app.UsageError(f"--out={out}: the grid is written as a PNG; name it *.png.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
      raise app.UsageError(f"--out={out}: the directory {os.path.dirname(os.path.abspath(out))} does not exist.")
  import jax
  import numpy as np

  from mmjax.sample.text_to_image import sampler_options
  from mmjax.train import workdir as workdir_lib

  logging.set_verbosity(logging.WARNING)
  # The flags as config.sampler keys; which of them the kind's sampler takes is what sampler_options returns.
  flag_keys = dict(
    name=_SAMPLER,
    temperature=_TEMPERATURE,
    top_k=_TOP_K,
    top_p=_TOP_P,
    beam_size=_BEAM,
    steps=_STEPS,
    choice_temperature=_CHOICE_TEMPERATURE,
    guidance=_GUIDANCE,
    candidates=_CANDIDATES,
    plausibility=_PLAUSIBILITY,
  )
  given = {k: f.value for k, f in flag_keys.items() if f.value is not None}
  try:
    opts = sampler_options(config, **given)
  except ValueError as e:
    named = " ".join(f"--{flag_keys[k].name}={v}" for k, v in given.items())
    raise app.UsageError(f"{named}: {e}" if named else str(e)) from None
  unused = [f"--{flag_keys[k].name}" for k in given if k not in opts]
  if unused:
    takes = [f"--{f.name}" for k, f in flag_keys.items() if k in opts]
    raise app.UsageError(
      f"{' '.join(unused)}: this workdir's text-to-image sampler (config.model.kind={config.model.kind!r}) does not "
      f"take {'it' if len(unused) == 1 else 'them'}; it takes {', '.join(takes)}."
    )
  if _SPLIT.value:
    overrides = {f"sampler.{k}": v for k, v in given.items()}
    if flags.FLAGS["seed"].present:
      overrides["seed"] = _SEED.value  # the evaluator draws its noise from config.seed
    t = workdir_lib.load(_WORKDIR.value, overrides)
    metrics, preds = workdir_lib.make_evaluator(t.setup, t.data)(t.params, _SPLIT.value, max_examples=num)
    _report(t, preds)
    for k in sorted(metrics):
      print(f"{k}: {metrics[k]:.4f}")
    return
  from mmjax.sample.text_to_image import encode_prompts, image_grid, make_generate_fn

  t = workdir_lib.load(_WORKDIR.value)
  try:
    tokens, lengths = encode_prompts(t.data.tokenizer, _PROMPT.value, _prompt_limit(config))
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  run = make_generate_fn(t.setup, opts)
  # Guidance 1 is the conditional sampler exactly (as the evaluator has it): skip the doubled batch.
  guidance = None if opts["guidance"] == 1.0 else opts["guidance"]
  images = _draw(run, t, np.repeat(tokens, num, 0), np.repeat(lengths, num, 0), jax.random.key(_SEED.value), guidance)
  size = images.shape[1]
  scale = -(-T2I_CELL // size)
  grid = image_grid(images.reshape((len(tokens), num) + images.shape[1:]), scale)
  from PIL import Image

  Image.fromarray(grid).save(out)
  shown = f", shown {scale}x" if scale > 1 else ""
  print(f"wrote {out}: {len(tokens)} prompt(s) x {num} images of {size}x{size} pixels{shown}")
  for i, prompt in enumerate(_PROMPT.value):
    print(f"  row {i}: {prompt}")


def _prompt_limit(config) -> int:
  """The most caption tokens the workdir's model reads (its kind's max_prompt_len hook)."""
  from mmjax.models import model_class

  return int(model_class(config.model).max_prompt_len(config.model))


def _draw(run, t, tokens, lengths, rng, guidance):
  """Images [N, S, S, 3] of N caption rows, in global batches of config.eval_batch_size rounded up to the
  mesh's batch shards (the last one zero-padded, the padding dropped), batch i drawn with fold_in(rng, i):
  a function of the seed and the rows alone."""
  import jax
  import numpy as np

  from mmjax.sample.embed import global_batch, local_rows

  n, out = len(tokens), []
  for i, (lo, hi) in enumerate(local_rows(n, global_batch(int(t.config.eval_batch_size), run.multiple))):
    rows = [np.zeros((hi - lo,) + x.shape[1:], x.dtype) for x in (tokens, lengths)]
    for r, x in zip(rows, (tokens, lengths)):
      r[: max(0, min(hi, n) - lo)] = x[lo : min(hi, n)]
    out.append(run(t.params, *rows, jax.random.fold_in(rng, i), guidance))
  return np.concatenate(out)[:n]


if __name__ == "__main__":
  cli.run(main)
