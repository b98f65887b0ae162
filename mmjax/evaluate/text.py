"""Text normalisation shared by the VQA and captioning metrics.

normalize_answer(s), exactly:
  1. lowercase (str.lower);
  2. delete apostrophes (' and the typographic ’), so contractions and possessives stay one word:
     "dog's" -> "dogs", "don't" -> "dont";
  3. replace every other ASCII punctuation character (string.punctuation) with a space, so words
     joined by hyphens, slashes or commas split: "black-and-white" -> "black and white";
  4. collapse runs of whitespace to one space and strip both ends.
Not done (unlike the official VQA script): article removal, number words -> digits, contraction
repair, and keeping the period in decimals ("2.5" -> "2 5"). Non-ASCII punctuation other than ’
is kept. The official normalisation is vqa.normalize_vqa_answer, used by the official VQA accuracy
(questions with several human answers); this one scores exact match and tokenises captions.
"""

from __future__ import annotations

import string

_DELETE = "'\u2019"
_TO_SPACE = "".join(c for c in string.punctuation if c not in _DELETE)
_TABLE = str.maketrans({**{c: "" for c in _DELETE}, **{c: " " for c in _TO_SPACE}})


def normalize_answer(s: str) -> str:
  return " ".join(s.lower().translate(_TABLE).split())


def tokenize(s: str) -> list[str]:
  """Caption tokens: the words of normalize_answer(s)."""
  return normalize_answer(s).split()
