"""BLEU (mmjax.evaluate.bleu) against hand-computed values and the reference scorer (pycocoevalcap's Bleu(4))."""

import contextlib
import io
import math

import pytest

from mmjax.evaluate.bleu import bleu, bleu4
from tests.test_metrics import _random_caption_sets


def test_bleu_hand_computed():
  # One image, candidate "a cat sat on the mat" (6 words), references "the cat sat on the mat" (6) and
  # "a cat is on a mat" (6). Clipped matches (max count in any one reference):
  #   1-grams a, cat, sat, on, the, mat: all 6 match -> 6/6
  #   2-grams "a cat" (ref 2), "cat sat", "sat on", "on the", "the mat" (ref 1): 5/5
  #   3-grams "a cat sat" no, "cat sat on", "sat on the", "on the mat" yes: 3/4
  #   4-grams "a cat sat on" no, "cat sat on the", "sat on the mat" yes: 2/3
  # Closest reference length 6 = candidate length: no brevity penalty.
  (b1, b2, b3, b4), per_item = bleu({0: "a cat sat on the mat"}, {0: ["the cat sat on the mat", "a cat is on a mat"]})
  assert b1 == pytest.approx(1.0, abs=1e-9)
  assert b2 == pytest.approx(1.0, abs=1e-9)
  assert b3 == pytest.approx((3 / 4) ** (1 / 3), abs=1e-9)
  assert b4 == pytest.approx((3 / 4 * 2 / 3) ** (1 / 4), abs=1e-9)  # 0.5 ** 0.25
  assert per_item[0] == pytest.approx([b1, b2, b3, b4], abs=1e-12)  # one image: corpus == per image


def test_bleu_corpus_sums_counts_and_penalises_brevity():
  # Two images. A: "a dog runs" vs ["a dog runs fast"] -> 1-grams 3/3, 2-grams 2/2, 3-grams 1/1,
  # 4-grams 0/0; closest reference length 4. B: "a cat" vs ["a cat", "the black cat sleeps"] ->
  # 2/2, 1/1, 0/0, 0/0; closest length 2 (|2 - 2| = 0). Corpus: correct (5, 3, 1, 0), guess (5, 3, 1, 0),
  # candidate length 5, reference length 6, so the brevity penalty exp(1 - 6/5) multiplies every BLEU-k.
  # BLEU-4 = (1 * 1 * 1 * (0 + 1e-15) / (0 + 1e-9)) ** (1/4) * penalty: the scorer's smoothing keeps it > 0.
  (b1, b2, b3, b4), _ = bleu(
    {"A": "a dog runs", "B": "a cat"}, {"A": ["a dog runs fast"], "B": ["a cat", "the black cat sleeps"]}
  )
  penalty = math.exp(1 - 6 / 5)
  assert b1 == pytest.approx(penalty, rel=1e-9)
  assert b3 == pytest.approx(penalty, rel=1e-9)
  assert b4 == pytest.approx((1e-15 / 1e-9) ** 0.25 * penalty, rel=1e-6)


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
  # Candidate of 4 words, references of 3 and 5 words: both 1 away, the scorer takes 3, so no brevity
  # penalty (with 5 there would be one).
  (b1, *_), _ = bleu({0: "w x y z"}, {0: ["w x y", "w x y z q"]})
  assert b1 == pytest.approx(1.0, abs=1e-9)


def test_bleu_tokenizes_case_and_punctuation():
  assert bleu({0: "A Dog, running."}, {0: ["a dog running"]}) == bleu({0: "a dog running"}, {0: ["a dog running"]})


def test_bleu_invalid_inputs():
  for cands, refs in [({0: "a"}, {1: ["a"]}), ({0: "a"}, {0: []}), ({0: "a"}, {0: "a"}), ({}, {})]:
    with pytest.raises(ValueError):
      bleu(cands, refs)


@pytest.mark.parametrize("seed", range(8))
def test_bleu_matches_pycocoevalcap(seed):
  """The reference Bleu(4) on the same already-tokenised strings: same corpus BLEU-1..4 and per-image scores."""
  from pycocoevalcap.bleu.bleu import Bleu

  candidates, references = _random_caption_sets(seed)
  with contextlib.redirect_stdout(io.StringIO()):  # the reference prints its totals
    want, want_per_image = Bleu(4).compute_score(references, {k: [c] for k, c in candidates.items()})
  got, per_item = bleu(candidates, references)
  assert got == pytest.approx(want, abs=1e-6)
  assert bleu4(candidates, references) == pytest.approx(want[3], abs=1e-6)
  assert max(want_per_image[3]) > 0.5  # real 4-gram matches, not only the smoothing's tiny values
  for k in range(4):
    assert [per_item[key][k] for key in references] == pytest.approx(want_per_image[k], abs=1e-6)
