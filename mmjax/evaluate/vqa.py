"""VQA-style exact-match accuracy after `normalize_answer` (one reference answer per question;
not the official min(#humans agreeing / 3, 1) soft accuracy over 10 annotators)."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from mmjax.evaluate.text import normalize_answer

OVERALL = "overall"


def vqa_exact_match(predictions: Sequence[str], answers: Sequence[str]) -> list[float]:
  """1.0 where normalize_answer(prediction) == normalize_answer(answer), else 0.0."""
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers.")
  return [float(normalize_answer(p) == normalize_answer(a)) for p, a in zip(predictions, answers)]


def accuracy_by_type(scores: Sequence[float], question_types: Sequence[str]) -> dict[str, float]:
  """Mean score per question type, plus OVERALL ("overall") = the mean over all items (so types
  weigh by their number of questions, not equally). Takes per-item scores rather than strings so
  any per-item metric can be grouped the same way."""
  if len(scores) != len(question_types):
    raise ValueError(f"{len(scores)} scores but {len(question_types)} question types.")
  if not scores:
    raise ValueError("accuracy_by_type needs at least one item.")
  if OVERALL in question_types:
    raise ValueError(f"{OVERALL!r} is reserved for the aggregate and cannot be a question type.")
  groups: dict[str, list[float]] = defaultdict(list)
  for score, qtype in zip(scores, question_types):
    groups[qtype].append(score)
  out = {qtype: sum(vals) / len(vals) for qtype, vals in groups.items()}
  out[OVERALL] = sum(scores) / len(scores)
  return out


def accuracy_by_template(predictions, template_of) -> dict[str, tuple[float, int]]:
  """{template: (exact-match accuracy, number of questions)} over the VQA `predictions` (dicts with
  task, prompt, prediction, references, as the evaluator returns them), grouped by
  template_of(prompt), e.g. a dataset source's question_template."""
  vqa = [p for p in predictions if p["task"] == "vqa"]
  if not vqa:
    return {}
  hits = vqa_exact_match([p["prediction"] for p in vqa], [p["references"][0] for p in vqa])
  groups: dict[str, list[float]] = defaultdict(list)
  for hit, p in zip(hits, vqa):
    groups[template_of(p["prompt"])].append(hit)
  return {t: (sum(v) / len(v), len(v)) for t, v in sorted(groups.items())}
