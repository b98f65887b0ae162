"""VQA exact match and CIDEr-D against hand-computed values and an independent loop-based oracle."""
import math
import random
from collections import defaultdict

import pytest

from mmjax.evaluate import (OVERALL, accuracy_by_template, accuracy_by_type, cider_d, normalize_answer,
                            vqa_exact_match)

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
  preds = [dict(task="vqa", prompt="q about red", prediction="Yes.", references=["yes"]),
           dict(task="vqa", prompt="q about blue", prediction="no", references=["yes"]),
           dict(task="vqa", prompt="other", prediction="two", references=["two"]),
           dict(task="caption", prompt="describe", prediction="a cat", references=["a dog"])]
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
  sentences = ["a man riding a horse on the beach", "two dogs playing with a red ball",
               "a plate of food with broccoli and rice", "a woman holding an umbrella in the rain",
               "a train stopped at a station platform", "a group of people flying kites in a park"]
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
  assert cider_d({0: "a CAT sitting", 1: "a dog!"}, refs) == cider_d({0: "a cat sitting", 1: "a dog"},
                                                                      {0: ["a cat sitting"], 1: ["a dog"]})


def test_cider_d_invalid_inputs():
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {1: ["a"]})
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {0: []})
  with pytest.raises(ValueError):
    cider_d({0: "a"}, {0: "a"})  # a bare string is not a list of references


def oracle_cider_d(cands, refs, n=4, sigma=6.0):
  """Independent transcription of the coco-caption CiderScorer loops, on pre-tokenised text."""
  def counts(words):
    c = defaultdict(int)
    for k in range(1, n + 1):
      for i in range(len(words) - k + 1):
        c[tuple(words[i:i + k])] += 1
    return c

  crefs = {key: [counts(r.split()) for r in rs] for key, rs in refs.items()}
  df = defaultdict(float)
  for rs in crefs.values():
    for g in {g for r in rs for g in r}:
      df[g] += 1
  ref_len = math.log(float(len(crefs)))

  def vec(c):
    v, norm, length = [defaultdict(float) for _ in range(n)], [0.0] * n, 0
    for g, tf in c.items():
      k = len(g) - 1
      v[k][g] = float(tf) * (ref_len - math.log(max(1.0, df[g])))
      norm[k] += v[k][g] ** 2
      if k == 1:
        length += tf
    return v, [math.sqrt(x) for x in norm], length

  scores = {}
  for key, cand in cands.items():
    v, norm, length = vec(counts(cand.split()))
    total = [0.0] * n
    for r in crefs[key]:
      vr, normr, lengthr = vec(r)
      for k in range(n):
        val = sum(min(v[k][g], vr[k][g]) * vr[k][g] for g in list(v[k]))
        if norm[k] != 0 and normr[k] != 0:
          val /= norm[k] * normr[k]
        total[k] += val * math.e ** (-((length - lengthr) ** 2) / (2 * sigma ** 2))
    scores[key] = sum(total) / n / len(crefs[key]) * 10.0
  return sum(scores.values()) / len(scores), scores


def test_cider_d_matches_oracle_on_random_corpus():
  rng = random.Random(0)
  vocab = "a the man dog cat on in with red ball park sits runs".split()
  sentence = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 9)))
  references = {i: [sentence() for _ in range(rng.randint(1, 4))] for i in range(12)}
  candidates = {i: sentence() if i % 3 else references[i][0] for i in range(12)}
  for n, sigma in [(4, 6.0), (2, 3.0), (1, 6.0)]:
    corpus, per_item = cider_d(candidates, references, n=n, sigma=sigma)
    want_corpus, want = oracle_cider_d(candidates, references, n=n, sigma=sigma)
    assert corpus == pytest.approx(want_corpus, abs=1e-9)
    for key in references:
      assert per_item[key] == pytest.approx(want[key], abs=1e-9)
