"""Embedding rows with a contrastive (CLIP / SigLIP) model under the training mesh: what retrieval
evaluation (mmjax.evaluate.contrastive) and text ranking (mmjax.sample.predict) share."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from mmjax import sharding
from mmjax.data.examples import TASK_CAPTION
from mmjax.models.contrastive import caption_tokens


def make_embed_fn(setup):
  """jit-compiled embedding under the training mesh: batch on data x fsdp, params as in training.

  Returns run(params, images, tokens, lengths) -> (image embeddings, text embeddings), numpy
  [B, D] each, all processes' rows in process order; every process passes its share of a global
  batch whose size is a multiple of `run.multiple` (the data x fsdp shards).
  """
  model = setup.model
  image_s, mat_s, vec_s = (sharding.batch_sharding(setup.mesh, r) for r in (4, 2, 1))
  fn = jax.jit(
    lambda p, im, tok, ln: model.apply({"params": p}, im, tok, ln)[:2],
    in_shardings=(setup.state_sharding.params, image_s, mat_s, vec_s),
    out_shardings=(mat_s, mat_s),
  )

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
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def global_batch(batch_size: int, multiple: int) -> int:
  """Rows per global batch: batch_size rounded up to the mesh multiple (and the process count)."""
  m = math.lcm(multiple, jax.process_count())
  return max(1, math.ceil(batch_size / m)) * m


def local_rows(n: int, rows_per_batch: int):
  """(start, stop) of this process's rows in each global batch of `n` rows (the last one padded)."""
  local = rows_per_batch // jax.process_count()
  for start in range(0, max(n, 1), rows_per_batch):
    lo = start + jax.process_index() * local
    yield lo, lo + local


def embed_rows(
  embed_fn, params, images: np.ndarray, tokens: np.ndarray, lengths: np.ndarray, rows_per_batch: int
) -> tuple[np.ndarray, np.ndarray]:
  """(image embeddings, text embeddings) [N, D] of N rows that every process passes whole, in
  global batches of `rows_per_batch` rows (the last one zero-padded; padding is dropped again)."""
  imgs, txts = [], []
  for lo, hi in local_rows(len(tokens), rows_per_batch):
    take = slice(lo, min(hi, len(tokens)))
    rows = [np.zeros((hi - lo,) + x.shape[1:], x.dtype) for x in (images, tokens, lengths)]
    for r, x in zip(rows, (images, tokens, lengths)):
      r[: max(0, take.stop - lo)] = x[take]
    img, txt = embed_fn(params, *rows)
    imgs.append(img)
    txts.append(txt)
  return np.concatenate(imgs)[: len(tokens)], np.concatenate(txts)[: len(tokens)]


def embed_texts(
  embed_fn, params, tokens: np.ndarray, lengths: np.ndarray, rows_per_batch: int, image_size: int
) -> np.ndarray:
  """Text embeddings [N, D] of token rows (every process passes all N rows; images are zeros)."""
  images = np.zeros((len(tokens), image_size, image_size, 3), np.uint8)
  return embed_rows(embed_fn, params, images, tokens, lengths, rows_per_batch)[1]


def caption_batches(data, split: str, batch_size: int, multiple: int, kind: str, max_examples=0, progress=False):
  """The (image, caption) pairs of `split` for a model of `kind` that reads them (a contrastive or
  text-to-image model): (ids [M] captioning example ids in split order, an iterator of global
  batches {image, tokens, lengths} padded to a multiple of `multiple` rows, this process's rows)."""
  sd = data.split(split)
  ids = np.flatnonzero(sd.task == TASK_CAPTION)
  if max_examples > 0:
    ids = ids[:max_examples]
  if len(ids) == 0:
    raise ValueError(
      f"split {split!r} has no captions: a {kind} model is evaluated (and trained) on "
      "(image, caption) pairs; set config.data.captions=True."
    )
  rows = list(local_rows(len(ids), global_batch(batch_size, multiple)))
  if progress:
    import tqdm

    rows = tqdm.tqdm(rows, desc=f"{kind} {split}", leave=False, disable=jax.process_index() != 0)

  def batches():
    for lo, hi in rows:
      examples = [sd.example(int(ids[i]) if i < len(ids) else -1) for i in range(lo, hi)]
      stack = {k: np.stack([e[k] for e in examples]) for k in ("image", "target_out", "target_mask")}
      tokens, lengths = caption_tokens(stack["target_out"], stack["target_mask"])
      yield {"image": stack["image"], "tokens": tokens, "lengths": lengths}

  return ids, batches()
