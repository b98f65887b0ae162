"""Evaluation by generation: VQA accuracy per question type (exact match, or the official VQA accuracy
for questions with several human answers), CIDEr-D and BLEU-4 on captions, yes/no accuracy on
audio-visual matching, and the grounding metrics (evaluate/grounding.py) on the grounding tasks."""

from __future__ import annotations

import jax
import numpy as np

from mmjax.data.tasks import GROUNDING_TASKS
from mmjax.evaluate import grounding
from mmjax.evaluate.bleu import bleu4
from mmjax.evaluate.cider import cider_d
from mmjax.evaluate.vqa import accuracy_by_type, is_official, vqa_exact_match, vqa_scores
from mmjax.sample.generate import make_generate_fn, options_from_config


def make_evaluator(setup, data, rng=None):
  """The VLM's evaluator: evaluate(params, split, max_examples=0, progress=False) -> (metrics,
  predictions) of evaluate_split, generating with config.sampler in batches of
  config.eval_batch_size (rng: jax.random.key(config.seed + 1) when None)."""
  config = setup.config
  generate_fn = make_generate_fn(setup, options_from_config(config, data.tokenizer))
  rng = jax.random.key(config.seed + 1) if rng is None else rng

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(
      data, split, generate_fn, params, config.eval_batch_size, rng, max_examples=max_examples, progress=progress
    )

  return evaluate


def evaluate_split(
  data, split: str, generate_fn, params, batch_size: int, rng, max_examples: int = 0, progress: bool = False
):
  """Generates an answer or caption for every example of `split` and scores it.

  Returns (metrics, predictions): metrics (for the tasks the split has; see `score`) and
  predictions, a list of dicts (example_id, task, qtype, prompt, prediction, references) in split
  order.
  """
  tok = data.tokenizer
  predictions = []
  n_proc = jax.process_count()
  if batch_size % n_proc:
    raise ValueError(f"eval batch_size={batch_size} is not divisible by the {n_proc} processes.")
  # Each process reads its share of every batch; generate_fn returns all processes' rows
  # concatenated in process order, so the example fields are all-gathered the same way.
  batches = data.eval_batches(
    split, batch_size, max_examples=max_examples, process_index=jax.process_index(), process_count=n_proc
  )
  if progress:
    import tqdm

    batches = tqdm.tqdm(batches, desc=f"eval {split}", leave=False, disable=jax.process_index() != 0)
  for i, batch in enumerate(batches):
    media = {k: batch[k] for k in getattr(generate_fn, "media_keys", ())}  # audio / video the model reads
    tokens = generate_fn(
      params, batch["image"], batch["prompt"], batch["prompt_len"], jax.random.fold_in(rng, i), **media
    )
    local = batch
    batch = gather_rows({k: batch[k] for k in _ROW_KEYS})
    if len(tokens) != len(batch["example_id"]):
      raise ValueError(f"generate_fn returned {len(tokens)} rows for {len(batch['example_id'])} examples.")
    names = [data.task_name(int(t)) for t in batch["task"]]
    # Detections are ranked by the model's confidence in them (grounding.box_confidences): one
    # teacher-forced pass over the generated ids, decided on all processes' rows so all make it.
    logprobs = None
    if "detect" in names and hasattr(generate_fn, "token_logprobs"):
      n, p = len(local["prompt_len"]), jax.process_index()
      logprobs = generate_fn.token_logprobs(
        params, local["image"], local["prompt"], local["prompt_len"], tokens[p * n : (p + 1) * n], **media
      )  # all processes' rows, like tokens
    for row in np.flatnonzero(batch["valid"]):
      ex = int(batch["example_id"][row])
      text = tok.decode(tokens[row].tolist())
      predictions.append(
        dict(
          example_id=ex,
          task=names[row],
          qtype=data.qtype_name(int(batch["qtype"][row])),
          prompt=tok.decode(batch["prompt"][row][: batch["prompt_len"][row]].tolist()),
          prediction=text,
          references=data.references(split, ex),
        )
      )
      if names[row] == "detect" and logprobs is not None:
        predictions[-1]["box_scores"] = grounding.box_confidences(text, tokens[row], logprobs[row], tok.locations)
  return score(predictions, split, tok.locations), predictions


_ROW_KEYS = ("example_id", "valid", "task", "qtype", "prompt", "prompt_len")


def gather_rows(batch: dict) -> dict:
  """This process's rows -> every process's rows, concatenated in process order (numpy)."""
  if jax.process_count() == 1:
    return batch
  from jax.experimental import multihost_utils

  return {k: np.asarray(multihost_utils.process_allgather(np.asarray(v), tiled=True)) for k, v in batch.items()}


def score(predictions, split: str, locations=None) -> dict[str, float]:
  """The metrics of `predictions` (evaluate_split's); `locations`: the run's LocationTokens, needed
  when there are grounding predictions. Keys, each present when the split has its examples:

    <split>/vqa_accuracy, <split>/vqa_accuracy_<type>
        VQA questions with one reference answer: exact match after normalize_answer (text.py),
        overall and per question type.
    <split>/vqa_official_accuracy, <split>/vqa_official_accuracy_<type>
        VQA questions whose references are several human answers (a manifest's "answers", e.g.
        VQAv2's ten): the official VQA accuracy (vqa.vqa_official_accuracy: the challenge's answer
        normalisation, min(#humans agreeing / 3, 1) averaged over the leave-one-out subsets),
        overall and per question type. A separate key, so vqa_accuracy keeps its meaning (and is
        not reported when no question has a single reference).
    <split>/cider, <split>/bleu4
        captions: corpus CIDEr-D (cider.py) and corpus BLEU-4 (bleu.py), each equal to coco-caption's
        (pycocoevalcap) on the same tokens, against all of an image's reference captions.
    <split>/av_match_accuracy
        audio-visual matching: yes/no exact match.
    <split>/refer_acc50, refer_miou, detect_map50, grounded_caption_acc, grounded_vqa_acc
        the grounding tasks (grounding.score_predictions).
  """
  metrics = {}
  vqa = [p for p in predictions if p["task"] == "vqa"]
  for key, subset in (
    ("vqa_accuracy", [p for p in vqa if not is_official(p["references"])]),
    ("vqa_official_accuracy", [p for p in vqa if is_official(p["references"])]),
  ):
    if subset:
      for name, acc in accuracy_by_type(vqa_scores(subset), [p["qtype"] for p in subset]).items():
        metrics[f"{split}/{key}" + ("" if name == "overall" else f"_{name}")] = acc
  av = [p for p in predictions if p["task"] == "av_match"]
  if av:  # audio-visual matching: yes/no exact match
    hits = vqa_exact_match([p["prediction"] for p in av], [p["references"][0] for p in av])
    metrics[f"{split}/av_match_accuracy"] = sum(hits) / len(hits)
  caps = [p for p in predictions if p["task"] == "caption"]
  if caps:
    candidates = {i: p["prediction"] for i, p in enumerate(caps)}
    references = {i: list(p["references"]) for i, p in enumerate(caps)}
    metrics[f"{split}/cider"], _ = cider_d(candidates, references)
    metrics[f"{split}/bleu4"] = bleu4(candidates, references)
  grounded = [p for p in predictions if p["task"] in GROUNDING_TASKS]
  if grounded:
    if locations is None:
      raise ValueError("grounding predictions need the run's location tokens: set config.data.location_bins.")
    metrics |= {f"{split}/{k}": v for k, v in grounding.score_predictions(grounded, locations).items()}
  return metrics
