r"""What does a trained VLM's answer position know about a spatial question?

For the shapes spatial questions of a split ("is the red object on the left?"), takes the decoder's
final hidden state at the position that predicts the answer and fits linear probes
(mmjax.projects.shapes.probe: ridge regression, fit on two thirds of the questions, scored on the rest) for:
  - the object's side along the asked axis (read off the image: the object's pixel centroid),
  - the side the question asks about (left/top vs right/bottom),
  - the answer (yes/no).
Chance is the majority-class rate of the held-out third, printed next to each probe. A model that
answers at chance although it names positions in its captions shows here whether the answer
position never reads the object's position (first probe near chance) or reads it but fails to
combine it with the question (first two probes high, the third at chance).

  python experiments/proj/shapes/probe_spatial.py --workdir=DIR [--split=validation] [--max_questions=1500]
"""

import jax
import numpy as np
from absl import app, flags

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained VLM workdir.", required=True)
_SPLIT = flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Split to probe.")
_MAX = flags.DEFINE_integer("max_questions", 1500, "Spatial questions to probe (at most).")


def answer_states(model, params, batch) -> np.ndarray:
  """Final decoder hidden states [B, D] at the first target position (it predicts the answer)."""

  def run(params):
    _, state = model.apply(
      {"params": params},
      batch["image"],
      batch["prompt"],
      batch["prompt_len"],
      batch["target_in"][:, :1],
      mutable=["intermediates"],
      capture_intermediates=lambda m, _: m.name == "norm" and "decoder" in m.scope.path,
    )
    return state["intermediates"]["decoder"]["norm"]["__call__"][0]

  return np.asarray(jax.jit(run)(params))[:, -1]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mmjax.projects.shapes import scenes as shapes
  from mmjax.projects.shapes.probe import linear_probe_accuracy
  from mmjax.train import workdir as workdir_lib

  t = workdir_lib.load(_WORKDIR.value)
  split = t.data.split(_SPLIT.value)
  ids = [e for e in range(len(split)) if t.data.qtype_name(int(split.qtype[e])) == "spatial"][: _MAX.value]
  if len(ids) < 30:
    raise ValueError(
      f"split {_SPLIT.value!r} of {_WORKDIR.value} has {len(ids)} spatial questions; the probe "
      "needs at least 30 (a shapes dataset with spatial questions)."
    )
  examples = [split.example(e) for e in ids]
  batch = {k: np.stack([x[k] for x in examples]) for k in ("image", "prompt", "prompt_len", "target_in")}
  states = answer_states(t.setup.model, t.params, batch)
  object_low, asked_low, yes = [], [], []
  for e, ex in zip(ids, examples):
    question = split.prompt_text(e)
    color = next(w for w in question.split() if w in shapes.COLORS)
    side = question.split()[-1].rstrip("?")
    rows, cols = np.nonzero((ex["image"] == np.asarray(shapes.COLOR_RGB[color])).all(-1))
    centre = (cols if side in ("left", "right") else rows).mean() + 0.5
    object_low.append(centre < ex["image"].shape[0] / 2)
    asked_low.append(side in ("left", "top"))
    yes.append(split.references(e) == "yes")
  print(f"{len(ids)} spatial questions of {_SPLIT.value}; probe accuracy on the held-out third (majority rate):")
  for name, labels in (
    ("object on the left/top", object_low),
    ("question asks left/top", asked_low),
    ("answer is yes", yes),
  ):
    acc, base = linear_probe_accuracy(states, np.asarray(labels))
    print(f"  {name:24s} {acc:.3f} ({base:.3f})")


if __name__ == "__main__":
  cli.run(main)
