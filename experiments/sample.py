r"""Samples from a trained workdir.

  python experiments/sample.py --workdir=DIR --image=scene.png --prompt="what shape is the red object?"
  python experiments/sample.py --workdir=DIR --image=scene.png --prompt="describe the image."
  python experiments/sample.py --workdir=DIR --split=test --num=16      # image grid + text report

Images of any mode are converted to RGB (transparency composited on white) and resized to the
model's image size with bicubic filtering. --sampler: greedy | temperature | top_k | top_p | beam.
"""
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_IMAGE = flags.DEFINE_multi_string("image", [], "Image file(s); one prompt for all, or one prompt per image.")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "Question or captioning prompt (e.g. 'describe the image.').")
_SPLIT = flags.DEFINE_enum("split", None, ["train", "validation", "test"], "Write a report for a split instead.")
_NUM = flags.DEFINE_integer("num", 16, "Examples in a split report.")
_SAMPLER = flags.DEFINE_enum("sampler", None, ["greedy", "temperature", "top_k", "top_p", "beam"],
                             "Overrides the config's sampler.")
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
  import dataclasses
  import os
  import jax
  from mmjax.sample.generate import make_generate_fn
  from mmjax.sample.predict import answer
  from mmjax.sample.report import write_report
  from mmjax.train import workdir as workdir_lib
  from mmjax.train.trainer import generate_options

  logging.set_verbosity(logging.WARNING)
  t = workdir_lib.load(_WORKDIR.value)
  opts = generate_options(t.config, t.data.tokenizer)
  changes = {k: v for k, v in dict(sampler=_SAMPLER.value, temperature=_TEMPERATURE.value, top_k=_TOP_K.value,
                                   top_p=_TOP_P.value, beam_size=_BEAM.value).items() if v is not None}
  opts = dataclasses.replace(opts, **changes)
  gen = make_generate_fn(t.setup, opts)
  rng = jax.random.key(_SEED.value)
  if _SPLIT.value:
    from mmjax.evaluate.evaluator import evaluate_split
    metrics, preds = evaluate_split(t.data, _SPLIT.value, gen, t.params, t.config.eval_batch_size, rng,
                                    max_examples=_NUM.value)
    png, txt = write_report(os.path.join(_WORKDIR.value, "samples"), t.data, _SPLIT.value, preds, _NUM.value)
    print(open(txt).read())
    print(f"wrote {png} and {txt}")
    return
  prompts = _PROMPT.value
  if len(prompts) == 1:
    prompts = prompts * len(_IMAGE.value)
  if len(prompts) != len(_IMAGE.value):
    raise app.UsageError(f"{len(_IMAGE.value)} images but {len(_PROMPT.value)} prompts: give one prompt, "
                         "or one per image.")
  for image, prompt, text in zip(_IMAGE.value, prompts, answer(t, gen, _IMAGE.value, prompts, rng)):
    print(text if len(prompts) == 1 else f"{image}\t{prompt}\t{text}")


if __name__ == "__main__":
  app.run(main)
