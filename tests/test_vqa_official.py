"""The official VQA accuracy (mmjax.evaluate.vqa.vqa_official_accuracy) on cases worked by hand from the rules
of the official vqaEval.py, and the evaluator's keys for data with several human answers."""

import pytest

from mmjax.evaluate.evaluator import score
from mmjax.evaluate.vqa import (
  accuracy_by_template,
  normalize_vqa_answer,
  process_digit_article,
  process_punctuation,
  vqa_official_accuracy,
)


def _humans(**counts):
  """Ten human answers, e.g. _humans(dog=2, cat=8)."""
  out = [a for a, n in counts.items() for _ in range(n)]
  assert len(out) == 10
  return out


@pytest.mark.parametrize(
  "agree,want",
  [
    # k of the 10 humans gave the prediction. Each of the 10 leave-one-out subsets of 9 scores
    # min(matches / 3, 1); leaving out one of the k leaves k - 1 matches, leaving out another k.
    (0, 0.0),  # every subset: 0 matches -> 0
    (1, 0.3),  # 1 subset: 0 -> 0; 9 subsets: 1 -> 1/3.  (0 + 9 * 1/3) / 10 = 3/10
    (2, 0.6),  # 2 subsets: 1 -> 1/3; 8 subsets: 2 -> 2/3.  (2/3 + 16/3) / 10 = 6/10
    (3, 0.9),  # 3 subsets: 2 -> 2/3; 7 subsets: 3 -> 1.  (2 + 7) / 10 = 9/10
    (4, 1.0),  # 4 subsets: 3 -> 1; 6 subsets: 4 -> 1.  10 / 10
    (10, 1.0),
  ],
)
def test_leave_one_out_accuracy(agree, want):
  humans = ["dog"] * agree + ["cat"] * (10 - agree)
  if agree == 10:
    humans[0] = "dog"
  assert vqa_official_accuracy("dog", humans) == pytest.approx(want, abs=1e-12)


def test_fewer_humans():
  # 3 humans "dog", "dog", "cat": leaving out a "dog" leaves 1 match (1/3), leaving out "cat" leaves 2
  # (2/3): (1/3 + 1/3 + 2/3) / 3 = 4/9.
  assert vqa_official_accuracy("dog", ["dog", "dog", "cat"]) == pytest.approx(4 / 9, abs=1e-12)
  with pytest.raises(ValueError, match="at least 2 human answers"):
    vqa_official_accuracy("dog", ["dog"])
  with pytest.raises(ValueError):
    vqa_official_accuracy("dog", "dog")


def test_process_punctuation():
  # A comma between two digits anywhere: every punctuation mark is deleted, not spaced.
  assert process_punctuation("1,000") == "1000"
  assert process_punctuation("1,000 (approx)") == "1000 approx"
  # No digit comma: a mark touching a space is deleted, one between letters becomes a space.
  assert process_punctuation("dog,cat") == "dog cat"
  assert process_punctuation("dog, cat") == "dog cat"
  assert process_punctuation("dog/cat") == "dog cat"
  assert process_punctuation("dog / cat") == "dog  cat"  # deleted, both spaces stay
  # The test is per mark, on the original text: "/" touches no space here, "," does.
  assert process_punctuation("a/b, c") == "a b c"
  # Periods: deleted unless a digit follows; the apostrophe is not punctuation to the script.
  assert process_punctuation("2.5") == "2.5"
  assert process_punctuation("yes.") == "yes"
  assert process_punctuation("u.s.") == "us"
  assert process_punctuation("don't") == "don't"
  assert process_punctuation("hi!?") == "hi  "
  # At most 32 periods go (the script passes re.UNICODE == 32 as re.sub's count).
  assert process_punctuation("x" + "." * 40) == "x" + "." * 8


def test_process_digit_article():
  assert process_digit_article("Two Dogs") == "2 dogs"
  assert process_digit_article("none") == "0"
  assert process_digit_article("The  ten  apples") == "10 apples"
  assert process_digit_article("an apple a day") == "apple day"
  assert process_digit_article("dont isnt whats") == "don't isn't what's"
  assert process_digit_article("eleven") == "eleven"  # only zero..ten are mapped
  assert process_digit_article("Im") == "im"  # lowercased first, so the "Im" contraction key never matches
  assert normalize_vqa_answer("The dog's toy.") == "dog's toy"


def test_normalisation_when_humans_disagree():
  humans = _humans(**{"2": 3, "3": 7})
  # "Two" -> "two" -> "2": 3 humans agree -> 0.9 (see test_leave_one_out_accuracy).
  assert vqa_official_accuracy("Two", humans) == pytest.approx(0.9, abs=1e-12)
  assert vqa_official_accuracy(" two.\n", humans) == pytest.approx(0.9, abs=1e-12)
  # Articles go on both sides: "the dog" == "a dog" == "dog".
  humans = ["a dog"] * 2 + ["the dog"] * 2 + ["cat"] * 6
  assert vqa_official_accuracy("Dog", humans) == pytest.approx(1.0, abs=1e-12)  # 4 humans agree
  # Contractions: "dont" is repaired to "don't", so it matches "don't know" answers.
  humans = ["don't know"] * 3 + ["no"] * 7
  assert vqa_official_accuracy("dont know", humans) == pytest.approx(0.9, abs=1e-12)
  # The digit comma: "1,000" -> "1000" (2 humans agree -> 0.6); "1, 000" has no digit comma and
  # the comma touches a space, so it becomes "1 000" and matches nothing.
  humans = ["1000"] * 2 + ["1,000"] * 0 + ["many"] * 8
  assert vqa_official_accuracy("1,000", humans) == pytest.approx(0.6, abs=1e-12)
  assert vqa_official_accuracy("1, 000", humans) == 0.0


def test_unanimous_humans_are_compared_raw():
  # All 10 humans agree: the script cleans whitespace only (no normalisation on either side).
  humans = ["yes"] * 10
  assert vqa_official_accuracy(" yes\n", humans) == 1.0
  assert vqa_official_accuracy("Yes", humans) == 0.0
  assert vqa_official_accuracy("yes.", humans) == 0.0
  # One dissenting human switches normalisation on: "Yes" -> "yes" matches 9 -> 1.0.
  assert vqa_official_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


def _pred(prediction, references, qtype="vqa", task="vqa", prompt="q"):
  return dict(task=task, qtype=qtype, prompt=prompt, prediction=prediction, references=references)


def test_evaluator_keys_official_and_exact_match():
  preds = [
    _pred("dog", _humans(dog=2, cat=8)),  # 0.6
    _pred("two", _humans(**{"2": 3, "3": 7})),  # 0.9
    _pred("cat", _humans(dog=10), qtype="other"),  # 0.0
    # One reference: exact match, reported under the existing key only.
    _pred("Yes.", ["yes"]),
    _pred("no", ["yes"]),
  ]
  m = score(preds, "test")
  assert m["test/vqa_official_accuracy"] == pytest.approx((0.6 + 0.9 + 0.0) / 3, abs=1e-12)
  assert m["test/vqa_official_accuracy_vqa"] == pytest.approx(0.75, abs=1e-12)
  assert m["test/vqa_official_accuracy_other"] == 0.0
  assert m["test/vqa_accuracy"] == pytest.approx(0.5, abs=1e-12)
  assert m["test/vqa_accuracy_vqa"] == pytest.approx(0.5, abs=1e-12)
  assert not any(k.startswith("test/vqa_accuracy_other") for k in m)
  # Data with one reference per question has exactly the keys it had before.
  assert set(score(preds[3:], "test")) == {"test/vqa_accuracy", "test/vqa_accuracy_vqa"}
  assert set(score(preds[:3], "test")) == {
    "test/vqa_official_accuracy",
    "test/vqa_official_accuracy_vqa",
    "test/vqa_official_accuracy_other",
  }


def test_accuracy_by_template_uses_the_official_accuracy_for_human_answers():
  preds = [_pred("dog", _humans(dog=2, cat=8), prompt="what a"), _pred("yes", ["yes"], prompt="what b")]
  assert accuracy_by_template(preds, lambda p: p.split()[0]) == {"what": (pytest.approx(0.8), 2)}
