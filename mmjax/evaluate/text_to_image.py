"""Evaluation of a text-to-image model (an evaluator "t2i" kind: t2i_flow, t2i_tokens, t2i_pixels):
generate an image per caption, let the dataset score it, and measure the distance to the real images.

  evaluate = make_evaluator(setup, data)
  metrics, predictions = evaluate(params, "test", max_examples=0, progress=False)

Every captioning example of the split (its first `max_examples` when > 0) is one prompt: its caption.
Each prompt gets one image from the kind's sampler (mmjax.sample.text_to_image, config.sampler),
twice from the same randomness: with classifier-free guidance at config.sampler.guidance, and without
it (scale 1: the conditional sampler, which is what guidance 1 computes, at half the cost). With
config.sampler.candidates > 1 (the causal drawing kinds) each is the likeliest of that many drawings
under the distribution it was drawn from, guided or not (mmjax.sample.rerank). Rows go in
full global batches of config.eval_batch_size rounded up to the mesh's data x fsdp shards (padding
rows dropped). The randomness of a batch is drawn from config.seed and the batch's index, so an
evaluation is repeatable.

Metrics: the dataset's image_scorer (mmjax.data.source) over (prompt, image) pairs, each named
"<split>/<metric>" for the guided images and "<split>/<metric>_noguidance" for the unguided ones. A
dataset without a scorer reports none of them (one logged note): images alone have no ground truth.
With config.evaluate.frechet_features set, also "<split>/t2i_frechet" (and _noguidance): the Frechet
distance between the generated images and the dataset's images of the same prompts in that feature
space (mmjax.evaluate.frechet: a contrastive run's image encoder, or Inception-V3).

Predictions (for the sample report): one per prompt, in split order, with the per-image scores as
its `prediction` text and the generated images under "image" / "image_noguidance" (uint8 [H, W, 3]);
the report itself still shows the dataset's image of the caption (the reference).
"""

from __future__ import annotations

import logging

import jax
import numpy as np

from mmjax.evaluate.contrastive import caption_text
from mmjax.evaluate.frechet import frechet_distance, moments
from mmjax.sample.embed import caption_batches
from mmjax.sample.text_to_image import make_generate_fn, sampler_options

NO_GUIDANCE = "_noguidance"


def generate_split(data, split, generate_fn, params, batch_size, seed, guidance, max_examples=0, progress=False):
  """(ids [M] captioning example ids, prompts [M], guided images [M, S, S, 3], unguided images, the
  dataset's images of the prompts) of `split` in split order (module docstring)."""
  sd = data.split(split)
  ids, batches = caption_batches(data, split, batch_size, generate_fn.multiple, "text-to-image", max_examples, progress)
  guided, plain, real = [], [], []
  for i, batch in enumerate(batches):
    real.append(batch["image"])
    tokens, lengths = batch["tokens"], batch["lengths"]
    # One key per global batch, shared by both samplers: the two images of a prompt start from the
    # same noise, so their scores differ by guidance alone.
    rng = jax.random.fold_in(jax.random.key(seed), i)
    guided.append(generate_fn(params, tokens, lengths, rng, guidance))
    plain.append(generate_fn(params, tokens, lengths, rng, None))
  prompts = [caption_text(sd, int(i)) for i in ids]
  n = len(ids)
  return ids, prompts, np.concatenate(guided)[:n], np.concatenate(plain)[:n], np.concatenate(real)[:n]


_skip_noted = set()


def _score_text(scores: dict) -> str:
  return ", ".join(f"{k}={v:.2f}" for k, v in sorted(scores.items())) or "(not scored)"


def evaluate_split(data, split, generate_fn, params, config, max_examples=0, progress=False, features_fn=None):
  """(metrics, predictions) of the module doc for `split`; features_fn: mmjax.evaluate.frechet's (None:
  no Frechet distance)."""
  opts = sampler_options(config)
  # Guidance 1 is the conditional sampler exactly (flow_matching.guided); skip the doubled batch.
  guidance = None if opts["guidance"] == 1.0 else opts["guidance"]
  ids, prompts, guided, plain, real = generate_split(
    data, split, generate_fn, params, config.eval_batch_size, int(config.seed), guidance, max_examples, progress
  )
  scorer = data.source.image_scorer
  cfg = data.builder.builder_config
  metrics = {}
  if scorer is None:
    # Once per dataset: every manifest shares the builder's name, its config names the data.
    name = (data.builder.name, data.builder.builder_config.name)
    if name not in _skip_noted:
      _skip_noted.add(name)
      logging.warning("%s (%s) defines no image_scorer: text-to-image metrics are skipped.", *name)
  else:
    for suffix, images in (("", guided), (NO_GUIDANCE, plain)):
      metrics |= {f"{split}/{k}{suffix}": float(v) for k, v in scorer(cfg, prompts, images).items()}
  if features_fn is not None and len(ids) >= 2:
    real_moments = moments(features_fn, real)  # once for both samplers' images
    for suffix, images in (("", guided), (NO_GUIDANCE, plain)):
      metrics[f"{split}/t2i_frechet{suffix}"] = frechet_distance(*moments(features_fn, images), *real_moments)
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


def make_evaluator(setup, data, features_fn=None):
  """evaluate(params, split, max_examples=0, progress=False) -> (metrics, predictions) of the module doc.
  features_fn: the Frechet feature space (mmjax.evaluate.frechet.make_features_fn; None: no distance)."""
  config = setup.config
  generate_fn = make_generate_fn(setup)

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(data, split, generate_fn, params, config, max_examples, progress, features_fn)

  return evaluate
