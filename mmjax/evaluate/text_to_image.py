"""Evaluation of a text-to-image model (config.model.kind "t2i_flow"): generate an image per caption and
let the dataset score it.

  evaluate = make_evaluator(setup, data)
  metrics, predictions = evaluate(params, "test", max_examples=0, progress=False)

Every captioning example of the split (its first `max_examples` when > 0) is one prompt: its caption.
Each prompt gets one image from the flow sampler at config.sampler.{steps, method}, twice from the
same starting noise: with classifier-free guidance at config.sampler.guidance, and without it (scale 1:
the conditional sampler, which is what guidance 1 computes, at half the cost). Rows go in full global
batches of config.eval_batch_size rounded up to the mesh's data x fsdp shards (padding rows dropped).
The noise of a batch is drawn from config.seed and the batch's index, so an evaluation is repeatable.

Metrics: the dataset's image_scorer (mmjax.data.source) over (prompt, image) pairs, each named
"<split>/<metric>" for the guided images and "<split>/<metric>_noguidance" for the unguided ones.
A dataset without a scorer reports no metrics (one logged note): images alone have no ground truth
here, and a distribution distance (Frechet distance) is not implemented.

Predictions (for the sample report): one per prompt, in split order, with the per-image scores as
its `prediction` text and the generated images under "image" / "image_noguidance" (uint8 [H, W, 3]);
the report itself still shows the dataset's image of the caption (the reference).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from mmjax.evaluate.contrastive import caption_text
from mmjax.sample.embed import caption_batches
from mmjax.sample.text_to_image import make_generate_fn, sampler_options

NO_GUIDANCE = "_noguidance"


def generate_split(data, split, generate_fn, params, batch_size, seed, guidance, max_examples=0, progress=False):
  """(ids [M] captioning example ids, prompts [M], guided images [M, S, S, 3], unguided images) of
  `split` in split order (module docstring)."""
  sd = data.split(split)
  ids, batches = caption_batches(data, split, batch_size, generate_fn.multiple, "text-to-image", max_examples, progress)
  guided, plain = [], []
  for i, batch in enumerate(batches):
    tokens, lengths = batch["tokens"], batch["lengths"]
    # One key per global batch, shared by both samplers: the two images of a prompt start from the
    # same noise, so their scores differ by guidance alone.
    rng = jax.random.fold_in(jax.random.key(seed), i)
    guided.append(generate_fn(params, tokens, lengths, rng, guidance))
    plain.append(generate_fn(params, tokens, lengths, rng, None))
  prompts = [caption_text(sd, int(i)) for i in ids]
  return ids, prompts, np.concatenate(guided)[: len(ids)], np.concatenate(plain)[: len(ids)]


_skip_noted = set()


def _score_text(scores: dict) -> str:
  return ", ".join(f"{k}={v:.2f}" for k, v in sorted(scores.items())) or "(not scored)"


def evaluate_split(data, split, generate_fn, params, config, max_examples=0, progress=False):
  """(metrics, predictions) of the module doc for `split`."""
  opts = sampler_options(config)
  # Guidance 1 is the conditional sampler exactly (flow_matching.guided); skip the doubled batch.
  guidance = None if opts["guidance"] == 1.0 else opts["guidance"]
  ids, prompts, guided, plain = generate_split(
    data, split, generate_fn, params, config.eval_batch_size, int(config.seed), guidance, max_examples, progress
  )
  scorer = data.source.image_scorer
  cfg = data.builder.builder_config
  metrics = {}
  if scorer is None:
    if data.builder.name not in _skip_noted:
      _skip_noted.add(data.builder.name)
      logging.warning("%s defines no image_scorer: text-to-image metrics are skipped.", data.builder.name)
  else:
    for suffix, images in (("", guided), (NO_GUIDANCE, plain)):
      metrics |= {f"{split}/{k}{suffix}": float(v) for k, v in scorer(cfg, prompts, images).items()}
  predictions = []
  for i, example_id in enumerate(ids):
    if scorer is None:
      text = "(not scored)"
    else:
      text = (
        f"guided: {_score_text(scorer(cfg, [prompts[i]], guided[i : i + 1]))}; "
        f"unguided: {_score_text(scorer(cfg, [prompts[i]], plain[i : i + 1]))}"
      )
    predictions.append(
      dict(
        example_id=int(example_id),
        task="caption",
        qtype="t2i",
        prompt=prompts[i],
        prediction=text,
        references=data.references(split, int(example_id)),
        image=guided[i],
        image_noguidance=plain[i],
      )
    )
  return metrics, predictions


def make_evaluator(setup, data):
  """evaluate(params, split, max_examples=0, progress=False) -> (metrics, predictions) of the module doc."""
  config = setup.config
  generate_fn = make_generate_fn(setup)

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(data, split, generate_fn, params, config, max_examples, progress)

  return evaluate
