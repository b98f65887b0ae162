"""VQA exact match and CIDEr-D against hand-computed values and the reference CIDEr-D implementation
(pycocoevalcap)."""

import math
import random

import pytest

from mmjax.evaluate import OVERALL, accuracy_by_template, accuracy_by_type, cider_d, normalize_answer, vqa_exact_match

# --------------------------------------------------------------------------------------------- VQA


def test_normalize_answer():
  assert normalize_answer("  The   Dog.  ") == "the dog"
  assert normalize_answer("Black-and-White") == "black and white"
  assert normalize_answer("dog's") == "dogs"
  assert normalize_answer("don\u2019t") == "dont"
  assert normalize_answer("yes!!!\t\n") == "yes"
  assert normalize_answer("red,blue") == "red blue"
  assert normalize_answer("?!") == ""


def test_vqa_exact_match_ignores_case_punctuation_and_spacing():
  preds = ["Yes.", "two ", "black  and white", "A cat", "no"]
  answers = ["yes", "Two", "black-and-white", "cat", "yes"]
  assert vqa_exact_match(preds, answers) == [1.0, 1.0, 1.0, 0.0, 0.0]
  with pytest.raises(ValueError):
    vqa_exact_match(["a"], [])


def test_accuracy_by_type():
  scores = [1.0, 0.0, 1.0, 1.0, 0.0]
  types = ["yes/no", "number", "yes/no", "other", "yes/no"]
  assert accuracy_by_type(scores, types) == {"yes/no": 2 / 3, "number": 0.0, "other": 1.0, OVERALL: 3 / 5}
  for bad in (([1.0], []), ([], []), ([1.0], [OVERALL])):
    with pytest.raises(ValueError):
      accuracy_by_type(*bad)


def test_accuracy_by_template_groups_vqa_predictions():
  preds = [
    dict(task="vqa", prompt="q about red", prediction="Yes.", references=["yes"]),
    dict(task="vqa", prompt="q about blue", prediction="no", references=["yes"]),
    dict(task="vqa", prompt="other", prediction="two", references=["two"]),
    dict(task="caption", prompt="describe", prediction="a cat", references=["a dog"]),
  ]
  template = lambda prompt: prompt.split(" about ")[0]
  assert accuracy_by_template(preds, template) == {"other": (1.0, 1), "q": (0.5, 2)}
  assert accuracy_by_template(preds[3:], template) == {}


# ---------------------------------------------------------------------------------------- CIDEr-D


def test_cider_d_hand_computed():
  # Two images, so every tf-idf weight is tf * (log 2 - log df) with log df in {0, log 2}: a weight
  # is L = log 2 for n-grams of one image (or none) and 0 for "a" (in both images). L cancels below.
  candidates = {"A": "a cat runs", "B": "a bird"}
  references = {"A": ["a cat sits", "a dog runs"], "B": ["a bird flies"]}
  L = math.log(2)
  # Image A, candidate unigrams {a:0, cat:L, runs:L}, |c1| = sqrt(2) L; bigrams {a cat:L, cat runs:L}
  # ("cat runs" is in no reference: df 0 -> weight L), |c2| = sqrt(2) L. 2 bigrams.
  #   ref "a cat sits": unigrams {a:0, cat:L, sits:L}, bigrams {a cat:L, cat sits:L}; 2 bigrams.
  sim_1_1 = (L * L) / (math.sqrt(2) * L * math.sqrt(2) * L)  # only "cat" matches -> 1/2
  sim_1_2 = (L * L) / (math.sqrt(2) * L * math.sqrt(2) * L)  # only "a cat" matches -> 1/2
  #   ref "a dog runs": unigram "runs" matches, no bigram does; same length -> no penalty.
  sim_2_1 = (L * L) / (math.sqrt(2) * L * math.sqrt(2) * L)
  sim_2_2 = 0.0
  score_a = 10 * ((sim_1_1 + sim_2_1) + (sim_1_2 + sim_2_2)) / 2 / 2  # mean over n, / 2 refs = 3.75
  # Image B: candidate {a:0, bird:L} / {a bird:L} (1 bigram), reference {a:0, bird:L, flies:L} /
  # {a bird:L, bird flies:L} (2 bigrams): delta = -1, penalty exp(-1 / (2 * 6^2)).
  penalty = math.exp(-1 / 72)
  sim_b = (L * L) / (L * math.sqrt(2) * L) * penalty
  score_b = 10 * (sim_b + sim_b) / 2 / 1
  corpus, per_item = cider_d(candidates, references, n=2, sigma=6.0)
  assert score_a == pytest.approx(3.75, abs=1e-12)
  assert per_item["A"] == pytest.approx(score_a, abs=1e-9)
  assert per_item["B"] == pytest.approx(score_b, abs=1e-9)
  assert corpus == pytest.approx((score_a + score_b) / 2, abs=1e-9)


def test_cider_d_clipping_hand_computed():
  # n = 1: the reference implementation measures length in bigrams, so there is no penalty here.
  # Weights: cat, sat, dog, ran each appear in one of two images -> L each.
  references = {0: ["cat sat"], 1: ["dog ran"]}
  _, per_item = cider_d({0: "cat cat cat", 1: "dog ran"}, references, n=1)
  L = math.log(2)
  # candidate {cat: 3L}; clipped dot = min(3L, L) * L; norms 3L and sqrt(2) L.
  assert per_item[0] == pytest.approx(10 * min(3 * L, L) * L / (3 * L * math.sqrt(2) * L), abs=1e-9)
  assert per_item[1] == pytest.approx(10.0, abs=1e-9)
  # Without clipping, repetition would not matter (cosine is scale invariant): it would be 10/sqrt(2).
  assert per_item[0] == pytest.approx(10 / (3 * math.sqrt(2)), abs=1e-9)
  scores = [cider_d({0: " ".join(["cat"] * k), 1: "dog"}, references, n=1)[1][0] for k in (1, 2, 3, 4)]
  assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


def test_cider_d_length_penalty():
  references = {0: ["a cat on a mat"], 1: ["a dog in the park"], 2: ["two birds on a wire"]}
  cand = {0: "cat cat cat cat cat cat cat cat", 1: "a dog in the park", 2: "birds"}
  _, penalised = cider_d(cand, references, sigma=6.0)
  _, free = cider_d(cand, references, sigma=1e9)  # exp(-d^2 / 2e18) == 1.0 in float64
  # 8 words vs 5 words: 7 vs 4 bigrams, so the penalty is exp(-3^2 / 72) on every n.
  assert penalised[0] == pytest.approx(free[0] * math.exp(-9 / 72), abs=1e-12)
  assert 0 < penalised[0] < free[0]
  assert penalised[1] == free[1] == pytest.approx(10.0)


def test_cider_d_identical_and_disjoint_candidates():
  sentences = [
    "a man riding a horse on the beach",
    "two dogs playing with a red ball",
    "a plate of food with broccoli and rice",
    "a woman holding an umbrella in the rain",
    "a train stopped at a station platform",
    "a group of people flying kites in a park",
  ]
  references = {i: [s, s] for i, s in enumerate(sentences)}
  corpus, per_item = cider_d({i: s for i, s in enumerate(sentences)}, references)
  assert all(v == pytest.approx(10.0, abs=1e-9) for v in per_item.values())  # the maximum
  assert corpus == pytest.approx(10.0, abs=1e-9)
  cands = {i: s for i, s in enumerate(sentences)}
  cands[0] = "zebra giraffe elephant"  # shares no n-gram with its references
  _, per_item = cider_d(cands, references)
  assert per_item[0] == 0.0 and per_item[1] == pytest.approx(10.0)


def test_cider_d_single_image_corpus_scores_zero():
  # log(number of images) = 0 zeroes every weight: a known property of corpus-df CIDEr-D.
  assert cider_d({0: "a cat"}, {0: ["a cat"]}) == (0.0, {0: 0.0})


def test_cider_d_tokenizes_case_and_punctuation():
  refs = {0: ["A cat, sitting."], 1: ["a dog"]}
  assert cider_d({0: "a CAT sitting", 1: "a dog!"}, refs) == cider_d(
    {0: "a cat sitting", 1: "a dog"}, {0: ["a cat sitting"], 1: ["a dog"]}
  )


def test_cider_d_invalid_inputs():
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {1: ["a"]})
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {0: []})
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {0: "a"})  # a bare string is not a list of references


def _random_caption_sets(seed):
  """A random corpus: random words, 2-30 images (a single image scores 0), 1-6 references of 1-15 words each,
  and candidates that copy a reference, are a random sentence (maybe empty) or repeat one word (clipping)."""
  rng = random.Random(seed)
  vocab = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 40))]
  sentence = lambda lo=1: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, 15)))
  references = {f"img{i}": [sentence() for _ in range(rng.randint(1, 6))] for i in range(rng.randint(2, 30))}
  kinds = [lambda refs: rng.choice(refs), lambda refs: sentence(0), lambda refs: " ".join([rng.choice(vocab)] * 5)]
  candidates = {k: rng.choice(kinds)(refs) for k, refs in references.items()}
  return candidates, references


@pytest.mark.parametrize("seed", range(8))
def test_cider_d_matches_pycocoevalcap(seed):
  """The reference implementation (coco-caption's CiderScorer as packaged in pycocoevalcap, which big_vision
  uses) on the same already-tokenised, lowercase, space-joined strings: same corpus and per-image scores."""
  from pycocoevalcap.cider.cider import Cider
  from pycocoevalcap.cider.cider_scorer import CiderScorer, precook

  candidates, references = _random_caption_sets(seed)
  want_corpus, want = Cider().compute_score(references, {k: [c] for k, c in candidates.items()})
  corpus, per_item = cider_d(candidates, references)
  assert max(want) > 1.0  # the corpus holds real matches, not only near-zero scores
  assert corpus == pytest.approx(float(want_corpus), abs=1e-6)
  for key, value in zip(references, want):  # pycocoevalcap returns the scores in the order of the keys
    assert per_item[key] == pytest.approx(float(value), abs=1e-6), key
  # Other n and sigma: Cider.compute_score always counts 1..4-grams (its cook_append drops n), so the
  # reference's CiderScorer is fed precook(s, n) directly, as cook_append would with n passed on.
  for n, sigma in [(2, 3.0), (1, 6.0), (3, 1.5)]:
    scorer = CiderScorer(n=n, sigma=sigma)
    scorer.crefs = [[precook(r, n) for r in refs] for refs in references.values()]
    scorer.ctest = [precook(candidates[k], n) for k in references]
    want_corpus, want = scorer.compute_score()
    corpus, per_item = cider_d(candidates, references, n=n, sigma=sigma)
    assert corpus == pytest.approx(float(want_corpus), abs=1e-6)
    assert [per_item[k] for k in references] == pytest.approx([float(v) for v in want], abs=1e-6)
