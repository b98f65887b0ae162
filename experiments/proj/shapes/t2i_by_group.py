r"""A text-to-image workdir's scores on the shapes data, by kind of prompt: which combinations it draws.

  python experiments/proj/shapes/t2i_by_group.py --workdir=DIR [--split=test] [--guidance=G] [--candidates=N] \
      [--plausibility=A]

Draws every prompt of --split as the trainer's evaluation does (the workdir's sampler, seed and batches,
guided at the config's scale or --guidance and plausibility or --plausibility, and unguided; the
config's candidates or --candidates drawings per image), scores each image with the shapes parser, and
prints one markdown table row per group of prompts: seen combinations, a held-out relation (a
pair-relation-pair fact no training caption states) or a held-out (colour, shape) pair, each by its
number of objects, then all prompts (equal to the trainer's `<split>/t2i_*` metrics at the same
guidance). Columns: count, then object / scene / relation accuracy, guided / unguided.
"""

from __future__ import annotations

import collections

from absl import flags

from mmjax import cli
from mmjax.evaluate.text_to_image import generate_split
from mmjax.projects.shapes import parse, t2i
from mmjax.sample.text_to_image import make_generate_fn, sampler_options
from mmjax.train import workdir as workdir_lib

FLAGS = flags.FLAGS
METRICS = ("t2i_object_accuracy", "t2i_scene_accuracy", "t2i_relation_accuracy")


def define_flags():
  """The script's flags, defined when it runs (not at import)."""
  flags.DEFINE_string("workdir", None, "A text-to-image workdir on the shapes t2i data.", required=True)
  flags.DEFINE_string("split", "test", "The split whose prompts are drawn.")
  flags.DEFINE_float("guidance", None, "Guidance scale (default: the config's sampler.guidance).")
  flags.DEFINE_integer("candidates", None, "Drawings per image, the likeliest kept (default: the config's).")
  flags.DEFINE_float("plausibility", None, "Guidance among the plausible indices (default: the config's).")


def group(held: t2i.HeldOut, spec: t2i.Spec) -> str:
  """The row of a prompt: its kind of combination and its object count."""
  if any(held.pair_held_out(p) for p in spec.objects):
    kind = "held-out pair"
  elif held.triple_held_out(spec.triple()):
    kind = "held-out relation"
  else:
    kind = "seen"
  return f"{kind}, {len(spec.objects)} object{'s' if len(spec.objects) > 1 else ''}"


def main(argv):
  del argv
  trained = workdir_lib.load(FLAGS.workdir)
  config, data = trained.config, trained.data
  cfg = data.builder.builder_config
  if getattr(cfg, "t2i", None) is None:
    raise ValueError(f"--workdir={FLAGS.workdir}: its data is not the shapes text-to-image variant.")
  guidance = float(config.sampler.guidance if FLAGS.guidance is None else FLAGS.guidance)
  opts = sampler_options(config, candidates=FLAGS.candidates, plausibility=FLAGS.plausibility)
  run = make_generate_fn(trained.setup, opts)
  _, prompts, guided, plain, _ = generate_split(
    data,
    FLAGS.split,
    run,
    trained.params,
    int(config.eval_batch_size),
    int(config.seed),
    None if guidance == 1.0 else guidance,  # as the trainer's evaluation: 1 is the conditional sampler
    progress=True,
  )
  held = cfg.t2i.held_out(cfg.seed, cfg.num_shapes)
  rows = collections.defaultdict(list)
  for i, prompt in enumerate(prompts):
    spec = t2i.parse_prompt(prompt)
    rows[group(held, spec)].append(i)
  rows = dict(sorted(rows.items())) | {"all": list(range(len(prompts)))}
  best = f", best of {opts['candidates']}" if "candidates" in opts else ""
  print(f"{FLAGS.split} prompts of {FLAGS.workdir}, guidance {guidance:g} / unguided{best}")
  print("| prompts | count | object | scene | relation |")
  print("|---|---|---|---|---|")
  for name, idx in rows.items():
    both = [parse.evaluate([prompts[i] for i in idx], [images[i] for i in idx]) for images in (guided, plain)]
    cells = [" / ".join(f"{m[k]:.3f}" if k in m else "-" for m in both) for k in METRICS]
    print(f"| {name} | {len(idx)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
