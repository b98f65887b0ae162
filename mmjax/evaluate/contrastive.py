"""Evaluation of a contrastive (CLIP / SigLIP) model: image-text retrieval and zero-shot shapes.

  evaluate = make_evaluator(setup, data)
  metrics, predictions = evaluate(params, "test", max_examples=0, progress=False)

Every captioning example of the split (its first `max_examples` when > 0) is one (image, caption)
pair; every image (record) and every caption is embedded once, in full global batches of
config.eval_batch_size rows rounded up to a multiple of the mesh's data x fsdp shards (padding rows
are dropped again). Metrics (math and tie rule in retrieval.py):

  <split>/retrieval_i2t_r{1,5,10}  image -> text: one of the image's own captions in the top k of
                                   all captions of the split
  <split>/retrieval_t2i_r{1,5,10}  text -> image: the caption's image in the top k of all images
  <split>/zero_shot_accuracy       shapes data only: for every object of every image, "what shape is
                                   the <color> object?" answered by scoring the prompts
                                   ZERO_SHOT_PROMPT ("a red circle", "a red square", "a red
                                   triangle": one per shape kind of the dataset) against the image;
                                   the true shape comes from the image's caption. Chance is
                                   1 / data.shapes. Manifest data has no such labels: the metric is
                                   skipped (a logged note).

Predictions (for the sample report): one per image, in split order, with the caption it retrieves
first (prediction), its own captions (references) and the rank of the best of them (prompt).
"""
from __future__ import annotations

import logging

import jax
import numpy as np

from mmjax.data import shapes, tfds_builders
from mmjax.data.pipeline import TASK_CAPTION
from mmjax.evaluate import retrieval
from mmjax.models.contrastive import caption_tokens
from mmjax.sample.embed import local_rows, embed_texts, global_batch, make_embed_fn
from mmjax.sample.predict import encode_prompts

ZERO_SHOT_PROMPT = shapes.object_phrase  # (color, shape) -> "a red circle"


def embed_split(data, split: str, embed_fn, params, batch_size: int, max_examples: int = 0,
                progress: bool = False):
  """Embeds the (image, caption) pairs of `split`. Returns (ids [M] captioning example ids,
  image_emb [M, D], text_emb [M, D]) in split order."""
  sd = data.split(split)
  ids = np.flatnonzero(sd.task == TASK_CAPTION)
  if max_examples > 0:
    ids = ids[:max_examples]
  if len(ids) == 0:
    raise ValueError(f"split {split!r} has no captions: a contrastive model is evaluated (and trained) on "
                     "(image, caption) pairs; set --config.data.captions=True.")
  gb = global_batch(batch_size, embed_fn.multiple)
  rows = list(local_rows(len(ids), gb))
  if progress:
    import tqdm
    rows = tqdm.tqdm(rows, desc=f"embed {split}", leave=False, disable=jax.process_index() != 0)
  images, texts = [], []
  for lo, hi in rows:
    examples = [sd.example(int(ids[i]) if i < len(ids) else -1) for i in range(lo, hi)]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("image", "target_out", "target_mask")}
    img, txt = embed_fn(params, batch["image"], *caption_tokens(batch["target_out"], batch["target_mask"]))
    images.append(img)
    texts.append(txt)
  return ids, np.concatenate(images)[: len(ids)], np.concatenate(texts)[: len(ids)]


def caption_text(sd, example_id: int) -> str:
  """The caption of captioning example `example_id` of SplitData `sd`."""
  ri, j = (int(v) for v in sd.index[int(example_id)])
  record = sd.records[ri]
  return record["captions"][j - len(record["questions"])]


_skip_noted = set()


def zero_shot_trials(data, split: str, records: np.ndarray):
  """The shapes zero-shot task over the images `records` (record indices of `split`).

  Returns (prompts [P] texts, trial_image [T] index into `records`, candidates int [T, C] prompt
  indices, labels int [T]), or None for data without shape labels (manifests)."""
  cfg = data.builder.builder_config
  if not isinstance(cfg, tfds_builders.ShapesConfig):
    if data.builder.name not in _skip_noted:
      _skip_noted.add(data.builder.name)
      logging.warning("zero-shot classification is defined on the shapes data only; skipped for %s.",
                      data.builder.name)
    return None
  kinds = shapes.SHAPES[:cfg.num_shapes]
  prompts = [ZERO_SHOT_PROMPT(c, s) for c in shapes.COLORS for s in kinds]
  sd = data.split(split)
  trial_image, candidates, labels = [], [], []
  for i, r in enumerate(records):
    for color, shape in shapes.caption_objects(sd.records[int(r)]["captions"][0]):
      trial_image.append(i)
      c = shapes.COLORS.index(color)
      candidates.append([c * len(kinds) + k for k in range(len(kinds))])
      labels.append(kinds.index(shape))
  return prompts, np.asarray(trial_image, np.int64), np.asarray(candidates, np.int64), np.asarray(labels, np.int64)


def evaluate_split(data, split: str, embed_fn, params, batch_size: int, max_examples: int = 0,
                   progress: bool = False):
  """(metrics, predictions) of the module doc for `split`."""
  sd = data.split(split)
  ids, img, txt = embed_split(data, split, embed_fn, params, batch_size, max_examples, progress)
  records, first, text_image = np.unique(sd.index[ids, 0], return_index=True, return_inverse=True)
  image_emb = img[first]
  i2t, t2i = retrieval.retrieval_ranks(image_emb, txt, text_image)
  metrics = {f"{split}/{k}": v for k, v in retrieval.retrieval_metrics(i2t, t2i).items()}
  zs = zero_shot_trials(data, split, records)
  if zs is not None:
    prompts, trial_image, candidates, labels = zs
    tokens, lengths = encode_prompts(data.tokenizer, prompts, sd.max_target_len)
    prompt_emb = embed_texts(embed_fn, params, tokens, lengths, global_batch(batch_size, embed_fn.multiple),
                             sd.image_size)
    scores = np.einsum("td,tcd->tc", image_emb[trial_image], prompt_emb[candidates])
    metrics[f"{split}/zero_shot_accuracy"] = retrieval.zero_shot_accuracy(scores, labels)
  top = np.argmax(image_emb @ txt.T, axis=1)
  predictions = [dict(example_id=int(ids[first[i]]), task="caption", qtype="retrieval",
                      prompt=f"image -> text: own caption at rank {int(i2t[i]) + 1}",
                      prediction=caption_text(sd, ids[top[i]]), references=data.references(split, int(ids[first[i]])))
                 for i in range(len(records))]
  return metrics, predictions


def make_evaluator(setup, data):
  """evaluate(params, split, max_examples=0, progress=False) -> (metrics, predictions) of the module doc."""
  embed_fn = make_embed_fn(setup)

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(data, split, embed_fn, params, setup.config.eval_batch_size, max_examples, progress)

  return evaluate
