"""BLEU-1..4 of captions, reproducing the coco-caption scorer (pycocoevalcap.bleu.bleu.Bleu, i.e.
bleu_scorer.BleuScorer.compute_score(option="closest")) number for number:

* Tokens: `mmjax.evaluate.text.tokenize`, as for CIDEr-D (cider.py says how it differs from the
  reference's PTB tokenisation).
* Per caption: the clipped n-gram matches, correct_k = sum over the candidate's k-grams g of
  min(count in candidate, max count in any one reference), and guess_k = max(0, len - k + 1).
* Reference length: the "closest" one, the reference length nearest to the candidate's, the
  shorter one on a tie.
* Corpus BLEU-k (what papers report): correct, guess, candidate and reference lengths are summed over
  all images first; BLEU-k = (prod over i <= k of (correct_i + 1e-15) / (guess_i + 1e-9)) ** (1/k).
  The two constants are the scorer's only smoothing: they keep a zero count from dividing by zero,
  so a corpus without any matching 4-gram gets a tiny positive BLEU-4 rather than an error.
* Brevity penalty: with ratio = (candidate length + 1e-15) / (reference length + 1e-9), every
  BLEU-k is multiplied by exp(1 - 1 / ratio) when ratio < 1 (none when the candidates are longer).
* Per image: the same formulas on the image's own counts and lengths (the reference's per-image
  list; not an average that the corpus score is made of).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Mapping, Sequence

from mmjax.evaluate.cider import ngram_counts
from mmjax.evaluate.text import tokenize

_TINY, _SMALL = 1e-15, 1e-9  # the reference's constants (numerator / denominator)


def _closest(ref_lengths: Sequence[int], length: int) -> int:
  return min((abs(r - length), r) for r in ref_lengths)[1]


def _scores(correct: Sequence[float], guess: Sequence[float], length: float, ref_length: float) -> list[float]:
  """BLEU-1..n from clipped matches, guesses and lengths (the module doc's formulas)."""
  out, product = [], 1.0
  for k, (c, g) in enumerate(zip(correct, guess)):
    product *= (c + _TINY) / (g + _SMALL)
    out.append(product ** (1.0 / (k + 1)))
  ratio = (length + _TINY) / (ref_length + _SMALL)
  if ratio < 1:
    out = [b * math.exp(1 - 1 / ratio) for b in out]
  return out


def bleu(
  candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]], n: int = 4
) -> tuple[list[float], dict[Hashable, list[float]]]:
  """([corpus BLEU-1, ..., BLEU-n], {key: [that image's BLEU-1, ..., BLEU-n]}) of one candidate caption
  per key against that key's references (at least one each)."""
  if set(candidates) != set(references):
    raise ValueError("candidates and references must have the same keys.")
  if not references:
    raise ValueError("bleu needs at least one image.")
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}.")
  totals_correct, totals_guess = [0] * n, [0] * n
  total_len = total_ref_len = 0
  per_item = {}
  for key, cand in candidates.items():
    refs = references[key]
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{key!r}] must be a non-empty list of strings.")
    ref_words = [tokenize(r) for r in refs]
    max_counts: Counter = Counter()
    for words in ref_words:
      for gram, count in ngram_counts(words, n).items():
        max_counts[gram] = max(max_counts[gram], count)
    words = tokenize(cand)
    correct = [0] * n
    for gram, count in ngram_counts(words, n).items():
      correct[len(gram) - 1] += min(max_counts[gram], count)
    guess = [max(0, len(words) - k) for k in range(n)]
    ref_len = _closest([len(w) for w in ref_words], len(words))
    per_item[key] = _scores(correct, guess, len(words), ref_len)
    totals_correct = [a + b for a, b in zip(totals_correct, correct)]
    totals_guess = [a + b for a, b in zip(totals_guess, guess)]
    total_len += len(words)
    total_ref_len += ref_len
  return _scores(totals_correct, totals_guess, total_len, total_ref_len), per_item


def bleu4(candidates: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]) -> float:
  """Corpus BLEU-4 (the number captioning papers report as BLEU-4 / B@4)."""
  return bleu(candidates, references, n=4)[0][3]
