"""Evaluation metrics: VQA exact match (vqa.py) and CIDEr-D (cider.py), sharing text.py's
normalisation."""

from mmjax.evaluate.cider import cider_d, ngram_counts
from mmjax.evaluate.text import normalize_answer, tokenize
from mmjax.evaluate.vqa import OVERALL, accuracy_by_template, accuracy_by_type, vqa_exact_match

__all__ = [
  "normalize_answer",
  "tokenize",
  "vqa_exact_match",
  "accuracy_by_type",
  "accuracy_by_template",
  "OVERALL",
  "cider_d",
  "ngram_counts",
]
