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
import math

import jax
import numpy as np

from mmjax import sharding
from mmjax.data import shapes, tfds_builders
from mmjax.data.pipeline import TASK_CAPTION
from mmjax.evaluate import retrieval
from mmjax.models.contrastive import caption_tokens
from mmjax.sample.predict import encode_prompts

ZERO_SHOT_PROMPT = shapes.object_phrase  # (color, shape) -> "a red circle"


def make_embed_fn(setup):
  """jit-compiled embedding under the training mesh: batch on data x fsdp, params as in training.

  Returns run(params, images, tokens, lengths) -> (image embeddings, text embeddings), numpy
  [B, D] each, all processes' rows in process order; every process passes its share of a global
  batch whose size is a multiple of `run.multiple` (the data x fsdp shards).
  """
  model = setup.model
  image_s, mat_s, vec_s = (sharding.batch_sharding(setup.mesh, r) for r in (4, 2, 1))
  fn = jax.jit(lambda p, im, tok, ln: model.apply({"params": p}, im, tok, ln)[:2],
               in_shardings=(setup.state_sharding.params, image_s, mat_s, vec_s), out_shardings=(mat_s, mat_s))

  def run(params, images, tokens, lengths):
    put = lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x))
    with setup.context():
      out = fn(params, put(images, image_s), put(tokens, mat_s), put(lengths, vec_s))
    return tuple(_to_host(x) for x in out)

  run.multiple = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  return run


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(batch_size: int, multiple: int) -> int:
  """Rows per global batch: batch_size rounded up to the mesh multiple (and the process count)."""
  m = math.lcm(multiple, jax.process_count())
  return max(1, math.ceil(batch_size / m)) * m


def _local_rows(n: int, rows_per_batch: int):
  """(start, stop) of this process's rows in each global batch of `n` rows (the last one padded)."""
  local = rows_per_batch // jax.process_count()
  for start in range(0, max(n, 1), rows_per_batch):
    lo = start + jax.process_index() * local
    yield lo, lo + local


def embed_rows(embed_fn, params, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray,
               rows_per_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(image embeddings, text embeddings) [N, D] of N rows that every process passes whole, in
  global batches of `rows_per_batch` rows (the last one zero-padded; padding is dropped again)."""
  imgs, txts = [], []
  for lo, hi in _local_rows(len(tokens), rows_per_batch):
    take = slice(lo, min(hi, len(tokens)))
    rows = [np.zeros((hi - lo,) + x.shape[1:], x.dtype) for x in (images, tokens, lengths)]
    for r, x in zip(rows, (images, tokens, lengths)):
      r[: max(0, take.stop - lo)] = x[take]
    img, txt = embed_fn(params, *rows)
    imgs.append(img)
    txts.append(txt)
  return np.concatenate(imgs)[: len(tokens)], np.concatenate(txts)[: len(tokens)]


def embed_texts(embed_fn, params, tokens: np.ndarray, lengths: np.ndarray, rows_per_batch: int,
                image_size: int) -> np.ndarray:
  """Text embeddings [N, D] of token rows (every process passes all N rows; images are zeros)."""
  images = np.zeros((len(tokens), image_size, image_size, 3), np.uint8)
  return embed_rows(embed_fn, params, images, tokens, lengths, rows_per_batch)[1]


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
  rows = list(_local_rows(len(ids), gb))
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
