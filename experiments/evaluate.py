r"""Evaluates the newest checkpoint of a workdir on a split and appends the metrics.

A VLM workdir is scored by generation (VQA accuracy, CIDEr); a contrastive one
(config.model.kind="contrastive") by retrieval recall@1/5/10 and zero-shot accuracy; a text-to-image
one by its images (the dataset's image scorer, and with --frechet_features the Frechet distance to the
real images in that feature space: a contrastive run's workdir or inception_v3:<weights.safetensors>).

  python experiments/evaluate.py --workdir=DIR [--split=test] [--max_examples=0] [--by_template]
  python experiments/evaluate.py --workdir=T2I_DIR --frechet_features=CONTRASTIVE_DIR

--by_template also prints the VQA accuracy of every question template (the dataset source's
question_template, e.g. the shapes data's question with its colour, shape and position words
replaced) and writes it to
DIR/samples/<split>_templates.json.
"""

from absl import app, flags, logging

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
_MAX = flags.DEFINE_integer(
  "max_examples", 0, "Evaluate at most this many examples (0 = all; contrastive models: captions)."
)
_BY_TEMPLATE = flags.DEFINE_bool("by_template", False, "Also report VQA accuracy per question template.")
_FRECHET = flags.DEFINE_string(
  "frechet_features", None, "Text-to-image workdirs: config.evaluate.frechet_features for this evaluation."
)
_REPORT = flags.DEFINE_integer("report_examples", 16, "Examples written to DIR/samples/<split>_samples.*")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import os

  from mmjax.sample.report import write_report
  from mmjax.train import workdir as workdir_lib
  from mmjax.train.metrics_writer import MetricWriter

  logging.set_verbosity(logging.WARNING)
  overrides = {} if _FRECHET.value is None else {"evaluate.frechet_features": _FRECHET.value}
  t = workdir_lib.load(_WORKDIR.value, overrides)
  template = t.data.source.question_template
  if _BY_TEMPLATE.value and template is None:
    raise ValueError(
      f"--by_template: the dataset of {_WORKDIR.value} ({t.data.builder.name}) defines no question "
      "templates (its source has no question_template)."
    )
  # The evaluation of the workdir's model kind (generation, retrieval, text-to-image), with what it reads
  # from other runs (config.evaluate.frechet_features).
  evaluate = workdir_lib.make_evaluator(t.setup, t.data)
  metrics, preds = evaluate(t.params, _SPLIT.value, max_examples=_MAX.value, progress=True)
  writer = MetricWriter(_WORKDIR.value)
  writer.write(t.step, metrics)
  writer.close()
  write_report(os.path.join(_WORKDIR.value, "samples"), t.data, _SPLIT.value, preds, _REPORT.value)
  print(f"step {t.step}")
  for k, v in sorted(metrics.items()):
    print(f"{k}: {v:.4f}")
  if _BY_TEMPLATE.value:
    import json

    from mmjax.evaluate.vqa import accuracy_by_template

    table = accuracy_by_template(preds, template)
    for template, (acc, n) in table.items():
      print(f"  {acc:.3f}  n={n:5d}  {template}")
    with open(os.path.join(_WORKDIR.value, "samples", f"{_SPLIT.value}_templates.json"), "w") as f:
      json.dump({t: {"accuracy": a, "count": n} for t, (a, n) in table.items()}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
