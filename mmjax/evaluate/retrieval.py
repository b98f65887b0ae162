"""Image-text retrieval recall@k and zero-shot classification accuracy from similarity scores.

Ties count against the model, so the numbers never depend on the order of the candidates and a
model that scores everything alike gets 0, not a perfect score:

* retrieval: a query's rank is the number of *non-matching* candidates that score at least as high
  as its best-scoring match (0 = retrieved first). The query is a hit at k when rank < k. Several
  matches (an image with several captions) are one hit when any of them is in the top k; two
  matches tying with each other cost nothing.
* zero-shot: a trial is correct only when the true class scores strictly higher than every other
  class (a tie for the top score is a miss).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

KS = (1, 5, 10)


def match_ranks(scores: np.ndarray, matches: np.ndarray) -> np.ndarray:
  """scores float [Q, C] and matches bool [Q, C] (every query has a match) -> int [Q]: the number
  of non-matching candidates scoring >= the query's best match (its 0-based rank, ties against)."""
  scores, matches = np.asarray(scores, np.float64), np.asarray(matches, bool)
  if scores.shape != matches.shape or scores.ndim != 2:
    raise ValueError(f"scores {scores.shape} and matches {matches.shape} must be the same [Q, C] shape.")
  if not matches.any(axis=1).all():
    raise ValueError(f"queries {np.flatnonzero(~matches.any(axis=1)).tolist()[:5]} have no matching candidate.")
  best = np.where(matches, scores, -np.inf).max(axis=1, keepdims=True)
  return ((scores >= best) & ~matches).sum(axis=1)


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
  """{k: fraction of queries whose rank < k}."""
  ranks = np.asarray(ranks)
  return {int(k): float(np.mean(ranks < k)) if len(ranks) else 0.0 for k in ks}


def retrieval_ranks(
  image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """Ranks of both directions by dot product (cosine for L2-normalised embeddings).

  image_emb [N, D], text_emb [M, D], text_image int [M]: the image each text describes. Returns
  (i2t [N]: each image's rank among all M texts, t2i [M]: each text's rank among all N images).
  Works on `chunk` queries at a time, so memory stays O(chunk * (N + M)).
  """
  image_emb, text_emb = np.asarray(image_emb, np.float32), np.asarray(text_emb, np.float32)
  text_image = np.asarray(text_image, np.int64)
  n, m = len(image_emb), len(text_emb)
  if text_image.shape != (m,) or (m and not 0 <= text_image.min() <= text_image.max() < n):
    raise ValueError(f"text_image must give one image index in [0, {n}) per text ({m} texts).")
  i2t = np.zeros(n, np.int64)
  for s in range(0, n, chunk):
    q = np.arange(s, min(n, s + chunk))
    i2t[q] = match_ranks(image_emb[q] @ text_emb.T, text_image[None, :] == q[:, None])
  t2i = np.zeros(m, np.int64)
  for s in range(0, m, chunk):
    q = np.arange(s, min(m, s + chunk))
    t2i[q] = match_ranks(text_emb[q] @ image_emb.T, np.arange(n)[None, :] == text_image[q][:, None])
  return i2t, t2i


def retrieval_metrics(i2t: np.ndarray, t2i: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
  """Ranks of both directions (retrieval_ranks) -> {"retrieval_i2t_r1": ..., "retrieval_t2i_r10": ...}."""
  out = {}
  for name, ranks in (("i2t", i2t), ("t2i", t2i)):
    out |= {f"retrieval_{name}_r{k}": v for k, v in recall_at_k(ranks, ks).items()}
  return out


def zero_shot_correct(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """scores [N, C] (one row per trial, one column per class), labels int [N] -> bool [N]: the true
  class scores strictly higher than every other class (a tie for the top is a miss)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
  if scores.ndim != 2 or labels.shape != scores.shape[:1]:
    raise ValueError(f"scores {scores.shape} must be [N, C] with one label per row (labels {labels.shape}).")
  if len(labels) and not 0 <= labels.min() <= labels.max() < scores.shape[1]:
    raise ValueError(f"labels must lie in [0, {scores.shape[1]}).")
  rows = np.arange(len(labels))
  true = scores[rows, labels]
  others = scores.copy()
  others[rows, labels] = -np.inf
  return true > others.max(axis=1, initial=-np.inf)


def zero_shot_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
  correct = zero_shot_correct(scores, labels)
  return float(correct.mean()) if len(correct) else 0.0
