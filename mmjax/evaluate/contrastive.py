"""Evaluation of a contrastive (CLIP / SigLIP) model: image-text retrieval and the dataset's zero-shot task.

  evaluate = make_evaluator(setup, data)
  metrics, predictions = evaluate(params, "test", max_examples=0, progress=False)

Every captioning example of the split (its first `max_examples` when > 0) is one (image, caption)
pair; every image (record) and every caption is embedded once, in full global batches of
config.eval_batch_size rows rounded up to a multiple of the mesh's data x fsdp shards (padding rows
are dropped again). Metrics (math and tie rule in retrieval.py):

  <split>/retrieval_i2t_r{1,5,10}  image -> text: one of the image's own captions in the top k of
                                   all captions of the split
  <split>/retrieval_t2i_r{1,5,10}  text -> image: the caption's image in the top k of all images
  <split>/zero_shot_accuracy       datasets whose source defines zero_shot_trials (mmjax.data.source):
                                   each trial scores its candidate prompts against its image and is
                                   right when the label's prompt scores highest. Data without such
                                   labels (manifests) skips the metric (a logged note).

Predictions (for the sample report): one per image, in split order, with the caption it retrieves
first (prediction), its own captions (references) and the rank of the best of them (prompt).
"""

from __future__ import annotations

import logging

import numpy as np

from mmjax.evaluate import retrieval
from mmjax.sample.embed import caption_batches, embed_texts, global_batch, make_embed_fn
from mmjax.sample.predict import encode_prompts


def embed_split(data, split: str, embed_fn, params, batch_size: int, max_examples: int = 0, progress: bool = False):
  """Embeds the (image, caption) pairs of `split`. Returns (ids [M] captioning example ids,
  image_emb [M, D], text_emb [M, D]) in split order."""
  ids, batches = caption_batches(data, split, batch_size, embed_fn.multiple, "contrastive", max_examples, progress)
  images, texts = [], []
  for batch in batches:
    img, txt = embed_fn(params, batch["image"], batch["tokens"], batch["lengths"])
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
  """The dataset's zero-shot task (its source's zero_shot_trials) over the images `records`
  (record indices of `split`), given their first captions. Returns (prompts [P] texts, trial_image
  [T] index into `records`, candidates int [T, C] prompt indices, labels int [T]), or None for
  data without such labels (the metric is skipped, with one logged note per dataset)."""
  if data.source.zero_shot_trials is None:
    if data.builder.name not in _skip_noted:
      _skip_noted.add(data.builder.name)
      logging.warning("zero-shot classification is not defined for %s; skipped.", data.builder.name)
    return None
  sd = data.split(split)
  return data.source.zero_shot_trials(data.builder.builder_config, [sd.records[int(r)]["captions"][0] for r in records])


def evaluate_split(data, split: str, embed_fn, params, batch_size: int, max_examples: int = 0, progress: bool = False):
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
    prompt_emb = embed_texts(
      embed_fn, params, tokens, lengths, global_batch(batch_size, embed_fn.multiple), sd.image_size
    )
    scores = np.einsum("td,tcd->tc", image_emb[trial_image], prompt_emb[candidates])
    metrics[f"{split}/zero_shot_accuracy"] = retrieval.zero_shot_accuracy(scores, labels)
  top = np.argmax(image_emb @ txt.T, axis=1)
  predictions = [
    dict(
      example_id=int(ids[first[i]]),
      task="caption",
      qtype="retrieval",
      prompt=f"image -> text: own caption at rank {int(i2t[i]) + 1}",
      prediction=caption_text(sd, ids[top[i]]),
      references=data.references(split, int(ids[first[i]])),
    )
    for i in range(len(records))
  ]
  return metrics, predictions


def make_evaluator(setup, data):
  """evaluate(params, split, max_examples=0, progress=False) -> (metrics, predictions) of the module doc."""
  embed_fn = make_embed_fn(setup)

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(data, split, embed_fn, params, setup.config.eval_batch_size, max_examples, progress)

  return evaluate
