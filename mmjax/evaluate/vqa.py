"""VQA accuracy: exact match after `normalize_answer` (one reference answer per question), and the
official VQA accuracy over several human answers (`vqa_official_accuracy`).

The official accuracy reproduces the VQA challenge's evaluation script, GT-Vision-Lab/VQA
``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (commit a013f00, 2021, its current version),
rule for rule, quirks included, so that numbers on VQAv2 compare with published ones:

* Cleaning: newlines and tabs become spaces, then both ends are stripped (prediction and every human
  answer).
* When the human answers are not all identical, the prediction and every human answer are
  normalised (`normalize_vqa_answer`); when they are unanimous nothing more is done, so then
  "Yes" does not match ten "yes" (the script's choice: official answers are already normalised).
* `process_punctuation`: for each character of PUNCT in turn, it is deleted when it touches a
  space in the *original* text ("dog / cat", "dog, cat") or when the text has a comma between
  two digits anywhere ("1,000" -> "1000"), else it becomes a space ("dog/cat" -> "dog cat").
  Then a period not followed by a digit is deleted ("yes." -> "yes", "2.5" stays), at most 32 of
  them (the script passes re.UNICODE, 32, as `re.sub`'s count). The apostrophe is not in PUNCT,
  so "don't" keeps it.
* `process_digit_article`: lowercase, split on whitespace, number words zero..ten and "none" to
  digits (MANUAL_MAP), articles a / an / the dropped, then contractions missing their apostrophe
  repaired ("dont" -> "don't"; CONTRACTIONS), words joined by one space.
* Accuracy of one question: for each of the n human answers, leave it out and score
  min(#matches among the other n - 1 / 3, 1); the question's accuracy is the mean of the n scores.
  (The script leaves out answer *records*, distinct by their answer id, so exactly one per subset,
  as here.) With 10 answers: 0, 1, 2, 3+ humans agreeing give 0, 0.3, 0.6, 0.9 and 1.0 for 4+.
* The overall accuracy is the mean over questions. The script reports percentages rounded to 2
  decimals; here it is the unrounded fraction, like every other metric of the evaluator.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from mmjax.evaluate.text import normalize_answer

OVERALL = "overall"

# The tables of vqaEval.py, verbatim (its "Id've" / "Im" / "Ive" keys never match lowercased text,
# and "somebody'd" maps to "somebodyd"; both kept as the script has them).
CONTRACTIONS = {
  "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
  "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
  "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
  "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
  "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
  "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
  "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
  "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
  "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
  "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
  "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
  "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
  "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
  "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
  "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
  "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
  "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
  "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
  "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
  "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
  "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
  "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
  "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
  "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
  "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
MANUAL_MAP = {
  "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
  "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = ("a", "an", "the")
PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
# The script's "(?!<=\d)" is a lookahead for the text "<=" + digit (a lookbehind was meant), which
# never holds in front of a ".": so this deletes every period not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PERIOD_STRIP_COUNT = re.UNICODE  # == 32: the script passes the flag where re.sub takes its count


def process_punctuation(text: str) -> str:
  """vqaEval.processPunctuation (see the module doc)."""
  out = text
  digit_comma = _COMMA_STRIP.search(text) is not None
  for p in PUNCT:
    if p + " " in text or " " + p in text or digit_comma:  # tested on the original text, as the script does
      out = out.replace(p, "")
    else:
      out = out.replace(p, " ")
  return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
  """vqaEval.processDigitArticle (see the module doc)."""
  words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
  """The official normalisation of an answer: process_punctuation, then process_digit_article."""
  return process_digit_article(process_punctuation(text))


def _clean(text: str) -> str:
  return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_official_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
  """The official VQA accuracy of one prediction against the human answers of its question
  (VQAv2: 10), by the rules of the module docstring."""
  if isinstance(human_answers, str) or len(human_answers) < 2:
    raise ValueError(
      f"the official VQA accuracy needs a list of at least 2 human answers (it leaves one out), got {human_answers!r}."
    )
  humans = [_clean(a) for a in human_answers]
  pred = _clean(prediction)
  if len(set(humans)) > 1:
    humans = [normalize_vqa_answer(a) for a in humans]
    pred = normalize_vqa_answer(pred)
  matches = [a == pred for a in humans]
  total = sum(matches)
  return sum(min(1.0, (total - m) / 3) for m in matches) / len(humans)


def vqa_exact_match(predictions: Sequence[str], answers: Sequence[str]) -> list[float]:
  """1.0 where normalize_answer(prediction) == normalize_answer(answer), else 0.0."""
  if len(predictions) != len(answers):
    raise ValueError(f"{len(predictions)} predictions but {len(answers)} answers.")
  return [float(normalize_answer(p) == normalize_answer(a)) for p, a in zip(predictions, answers)]


def is_official(references: Sequence[str]) -> bool:
  """Whether a VQA question's references are human answers scored by the official accuracy (several
  of them) rather than one answer scored by exact match."""
  return len(references) > 1


def vqa_scores(predictions) -> list[float]:
  """Per-question scores of VQA predictions (dicts with prediction and references, as the evaluator
  returns them): the official accuracy where the references are several human answers, else exact
  match against the one reference."""
  return [
    vqa_official_accuracy(p["prediction"], p["references"])
    if is_official(p["references"])
    else vqa_exact_match([p["prediction"]], [p["references"][0]])[0]
    for p in predictions
  ]


def accuracy_by_type(scores: Sequence[float], question_types: Sequence[str]) -> dict[str, float]:
  """Mean score per question type, plus OVERALL ("overall") = the mean over all items (so types
  weigh by their number of questions, not equally). Takes per-item scores rather than strings so
  any per-item metric can be grouped the same way."""
  if len(scores) != len(question_types):
    raise ValueError(f"{len(scores)} scores but {len(question_types)} question types.")
  if not scores:
    raise ValueError("accuracy_by_type needs at least one item.")
  if OVERALL in question_types:
    raise ValueError(f"{OVERALL!r} is reserved for the aggregate and cannot be a question type.")
  groups: dict[str, list[float]] = defaultdict(list)
  for score, qtype in zip(scores, question_types):
    groups[qtype].append(score)
  out = {qtype: sum(vals) / len(vals) for qtype, vals in groups.items()}
  out[OVERALL] = sum(scores) / len(scores)
  return out


def accuracy_by_template(predictions, template_of) -> dict[str, tuple[float, int]]:
  """{template: (accuracy, number of questions)} over the VQA `predictions` (dicts with task, prompt,
  prediction, references, as the evaluator returns them), grouped by template_of(prompt), e.g. a
  dataset source's question_template. Accuracy: `vqa_scores` (exact match for one reference, the
  official accuracy for several human answers)."""
  vqa = [p for p in predictions if p["task"] == "vqa"]
  if not vqa:
    return {}
  groups: dict[str, list[float]] = defaultdict(list)
  for score, p in zip(vqa_scores(vqa), vqa):
    groups[template_of(p["prompt"])].append(score)
  return {t: (sum(v) / len(v), len(v)) for t, v in sorted(groups.items())}
