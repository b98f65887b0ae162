"""CIDEr-D (Vedantam et al., CVPR 2015), reproducing the reference coco-caption `CiderScorer`
(pyciderevalcap/ciderD/ciderD_scorer.py) number for number, including its quirks:

* Tokens: `mmjax.evaluate.text.tokenize` (lowercase, punctuation removed, whitespace split). The
  reference feeds PTB-tokenised text with punctuation tokens dropped; on plain sentences both agree,
  but e.g. "it's" is "its" here and "it 's" there.
* n-grams of length 1..n are counted per sentence.
* Document frequency df(g) = number of *images* whose reference set (union of its references)
  contains g; candidates do not count. With M = number of images, each n-gram gets the weight
  tf * (log M - log(max(1, df))): an n-gram no reference contains (df = 0) gets the largest weight
  log M, and an n-gram present in every image gets 0. Consequently a corpus of one image scores 0.
* For each n separately: sim_n = sum over candidate n-grams g of min(c_g, r_g) * r_g / (|c| |r|),
  with c, r the tf-idf vectors of candidate and reference; min() is the CIDEr-D clipping, which
  stops repeating a matched word from raising the score. sim_n = 0 when either norm is 0.
* Gaussian length penalty exp(-delta^2 / (2 sigma^2)) multiplies every sim_n, where delta is the
  difference in the number of *bigrams* (the reference counts length from the 2-gram entries, i.e.
  len(words) - 1 for non-empty sentences). So with n = 1 there is no length penalty at all.
* Per image: 10 * mean over n of (sum over references of sim_n) / number of references.
* Corpus score: mean of the per-image scores.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

from mmjax.evaluate.text import tokenize

Ngram = tuple[str, ...]


def ngram_counts(words: Sequence[str], n: int) -> Counter[Ngram]:
  """Counts of all n-grams of length 1..n."""
  return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


class _Vec:
  """tf-idf weights split by n-gram length, their norms, and the bigram count used as length."""

  def __init__(self, counts: Counter[Ngram], n: int, doc_freq: Counter[Ngram], log_num_images: float):
    self.weights: list[dict[Ngram, float]] = [{} for _ in range(n)]
    for gram, tf in counts.items():
      self.weights[len(gram) - 1][gram] = tf * (log_num_images - math.log(max(1.0, doc_freq[gram])))
    self.norms = [math.sqrt(sum(w * w for w in ws.values())) for ws in self.weights]
    # Matches the reference, which accumulates length over n-gram index 1 (bigrams).
    self.length = sum(tf for gram, tf in counts.items() if len(gram) == 2)


def _similarity(cand: _Vec, ref: _Vec, sigma: float) -> list[float]:
  penalty = math.exp(-((cand.length - ref.length) ** 2) / (2 * sigma**2))
  sims = []
  for c, r, c_norm, r_norm in zip(cand.weights, ref.weights, cand.norms, ref.norms):
    dot = sum(min(w, r.get(gram, 0.0)) * r.get(gram, 0.0) for gram, w in c.items())
    # Weights are >= 0, so a zero norm implies a zero dot product: sim_n is 0 then.
    sims.append((dot / (c_norm * r_norm) if c_norm and r_norm else 0.0) * penalty)
  return sims


def cider_d(
  candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4, sigma: float = 6.0
) -> tuple[float, dict[Hashable, float]]:
  """(corpus CIDEr-D, {key: per-image CIDEr-D}) for one candidate caption per key.

  `references` fixes the corpus over which document frequencies are computed, so it must hold
  exactly the candidates' keys, each with at least one reference.
  """
  if set(candidates) != set(references):
    raise ValueError("candidates and references must have the same keys.")
  if not references:
    raise ValueError("cider_d needs at least one image.")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}.")
  ref_counts = {}
  for key, refs in references.items():
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{key!r}] must be a non-empty list of strings.")
    ref_counts[key] = [ngram_counts(tokenize(r), n) for r in refs]

  doc_freq: Counter[Ngram] = Counter()
  for counts in ref_counts.values():
    doc_freq.update(set().union(*counts))
  log_num_images = math.log(len(references))

  per_item = {}
  for key, cand in candidates.items():
    vec = _Vec(ngram_counts(tokenize(cand), n), n, doc_freq, log_num_images)
    totals = [0.0] * n
    for counts in ref_counts[key]:
      sims = _similarity(vec, _Vec(counts, n, doc_freq, log_num_images), sigma)
      totals = [t + s for t, s in zip(totals, sims)]
    per_item[key] = 10.0 * (sum(totals) / n) / len(ref_counts[key])
  return sum(per_item.values()) / len(per_item), per_item
