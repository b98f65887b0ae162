"""Grounding metrics for boxes [y0, x0, y1, x1] (mmjax.data.boxes): IoU, referring-expression
accuracy, detection mAP@0.5 and grounded-caption accuracy.

* `iou` never returns NaN: boxes with no area (including inverted ones, whose negative extents are
  clamped to 0) have IoU 0 with everything, themselves included.
* `detection_map50` reproduces pycocotools' COCOeval AP at IoU 0.5 (area "all", no per-image
  detection limit), so numbers compare with published COCO-style results:
  - per image and label, detections are matched greedily in descending score order, each to the
    not-yet-matched ground truth with the highest IoU >= 0.5 (IoU ties go to the first such ground
    truth in the image's list; pycocotools takes the last, which only matters on exact ties);
    unmatched detections, duplicates of a matched ground truth included, are false positives;
  - all detections of a label are then ranked by score with a stable sort, so equal scores keep
    image order, then list order within an image (as pycocotools' mergesort does);
  - precision is made monotone from the right (the envelope), and AP is the mean over the 101 recall
    thresholds linspace(0, 1, 101) of the envelope at the first rank whose recall reaches the
    threshold, 0 where recall never does;
  - mAP is the mean over the labels present in the ground truth: a label with ground truth but no
    detections has AP 0 and lowers the mean, while detections of a label absent from the ground
    truth are ignored (there is no recall to measure; pycocotools leaves such a category out too).
* `grounded_caption_accuracy` scores captions whose phrases carry boxes (Kosmos-2 style).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from mmjax.data import tasks
from mmjax.evaluate.text import normalize_answer
from mmjax.location_tokens import LOC_PATTERN, as_boxes

IOU_THRESHOLD = 0.5
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # pycocotools' recThrs


def iou(a, b) -> np.ndarray:
  """Intersection over union of boxes [..., 4] ([y0, x0, y1, x1]), broadcasting the leading axes.
  A float64 scalar for two single boxes. 0 for disjoint boxes and whenever the union has no area."""
  a, b = as_boxes(a, "a"), as_boxes(b, "b")
  extent = lambda lo, hi: np.maximum(hi - lo, 0.0)
  inter = extent(np.maximum(a[..., 0], b[..., 0]), np.minimum(a[..., 2], b[..., 2])) * extent(
    np.maximum(a[..., 1], b[..., 1]), np.minimum(a[..., 3], b[..., 3])
  )
  area_a = extent(a[..., 0], a[..., 2]) * extent(a[..., 1], a[..., 3])
  area_b = extent(b[..., 0], b[..., 2]) * extent(b[..., 1], b[..., 3])
  union = area_a + area_b - inter
  out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
  return out[()] if out.ndim == 0 else out


def referring(pred_boxes: Sequence, gt_boxes: Sequence) -> dict[str, float]:
  """Referring-expression grounding, one box per expression: {"acc50": fraction with IoU >= 0.5,
  "miou": mean IoU}. A missing prediction (None, e.g. output that parsed to no box) counts IoU 0."""
  if len(pred_boxes) != len(gt_boxes):
    raise ValueError(f"{len(pred_boxes)} predicted boxes but {len(gt_boxes)} ground-truth boxes.")
  if not gt_boxes:
    raise ValueError("referring needs at least one expression.")
  ious = [0.0 if p is None else float(iou(p, g)) for p, g in zip(pred_boxes, gt_boxes)]
  return {"acc50": sum(v >= IOU_THRESHOLD for v in ious) / len(ious), "miou": sum(ious) / len(ious)}


def _boxes_of(pairs_boxes: list, name: str) -> np.ndarray:
  return as_boxes(pairs_boxes, name).reshape(-1, 4) if pairs_boxes else np.zeros((0, 4))


def average_precision50(predictions: Sequence[Sequence], ground_truth: Sequence[Sequence]) -> dict[Hashable, float]:
  """{label: AP@0.5} for every label in the ground truth (see the module docstring for the rules).

  predictions: per image a list of (label, box, score); ground_truth: per image a list of (label, box).
  """
  if len(predictions) != len(ground_truth):
    raise ValueError(f"{len(predictions)} images of predictions but {len(ground_truth)} of ground truth.")
  labels: dict[Hashable, None] = {}
  for image in ground_truth:
    for label, _ in image:
      labels[label] = None
  if not labels:
    raise ValueError("detection AP needs at least one ground-truth box.")
  for i, image in enumerate(predictions):
    for j, det in enumerate(image):
      if len(det) != 3 or not np.isfinite(float(det[2])):
        raise ValueError(f"predictions[{i}][{j}] must be (label, box, score) with a finite score, got {det!r}.")
  return {label: _average_precision(label, predictions, ground_truth) for label in labels}


def _average_precision(label, predictions, ground_truth) -> float:
  scores, hits, num_gt = [], [], 0
  for i, (dets, gts) in enumerate(zip(predictions, ground_truth)):
    gt_boxes = _boxes_of([box for lab, box in gts if lab == label], f"ground_truth[{i}]")
    mine = [(float(score), box) for lab, box, score in dets if lab == label]
    num_gt += len(gt_boxes)
    matched = np.zeros(len(gt_boxes), bool)
    order = sorted(range(len(mine)), key=lambda k: -mine[k][0])  # stable: ties keep list order
    for k in order:
      score, box = mine[k]
      hit = False
      if len(gt_boxes):
        overlaps = np.where(matched, -1.0, iou(as_boxes(box, f"predictions[{i}] box"), gt_boxes))
        best = int(np.argmax(overlaps))  # first of equal IoUs
        if overlaps[best] >= IOU_THRESHOLD:
          matched[best] = hit = True
      scores.append(score)
      hits.append(hit)
  if not hits:
    return 0.0
  rank = np.argsort(-np.asarray(scores), kind="mergesort")
  hit = np.asarray(hits)[rank]
  tp, fp = np.cumsum(hit), np.cumsum(~hit)
  recall = tp / num_gt
  precision = np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]
  first = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
  reached = first < len(precision)
  return float(np.where(reached, precision[np.minimum(first, len(precision) - 1)], 0.0).mean())


def detection_map50(predictions: Sequence[Sequence], ground_truth: Sequence[Sequence]) -> float:
  """COCO-style mAP at IoU 0.5: the mean of `average_precision50` over the ground-truth labels."""
  aps = average_precision50(predictions, ground_truth)
  return sum(aps.values()) / len(aps)


def _max_matching(adjacent: list[list[int]], num_right: int) -> int:
  """Size of a maximum bipartite matching (Kuhn's augmenting paths); adjacent[l] lists the right
  vertices left vertex l may take."""
  owner = [-1] * num_right

  def augment(l: int, seen: list[bool]) -> bool:
    for r in adjacent[l]:
      if not seen[r]:
        seen[r] = True
        if owner[r] < 0 or augment(owner[r], seen):
          owner[r] = l
          return True
    return False

  return sum(augment(l, [False] * num_right) for l in range(len(adjacent)))


def grounded_caption_accuracy(pred: Sequence[Sequence], gt: Sequence[Sequence]) -> float:
  """Fraction of all ground-truth (phrase, box) pairs, over all captions, that the predicted pairs of
  the same caption recover: same phrase (compared after normalize_answer, so case, punctuation and
  spacing do not matter) with a box at IoU >= 0.5, each predicted pair used at most once.

  Pairs are matched by a maximum matching rather than greedily, so the score does not depend on the
  order of the pairs: two ground-truth "dog" boxes are both recovered whenever some assignment of
  predicted "dog" boxes recovers both. Captions weigh by their number of ground-truth phrases.
  """
  if len(pred) != len(gt):
    raise ValueError(f"{len(pred)} predicted captions but {len(gt)} ground-truth captions.")
  total = found = 0
  for i, (p_pairs, g_pairs) in enumerate(zip(pred, gt)):
    p_phrases = [normalize_answer(phrase) for phrase, _ in p_pairs]
    p_boxes = _boxes_of([box for _, box in p_pairs], f"pred[{i}]")
    adjacent = []
    for phrase, box in g_pairs:
      overlaps = iou(as_boxes(box, f"gt[{i}]"), p_boxes) if len(p_boxes) else np.zeros(0)
      phrase = normalize_answer(phrase)
      adjacent.append([k for k, (q, o) in enumerate(zip(p_phrases, overlaps)) if q == phrase and o >= IOU_THRESHOLD])
    total += len(g_pairs)
    found += _max_matching(adjacent, len(p_pairs))
  if not total:
    raise ValueError("grounded_caption_accuracy needs at least one ground-truth phrase.")
  return found / total


def box_confidences(text: str, ids, logprobs, locations) -> list[float]:
  """The confidence of each object of `locations.parse(text)`, in its order, where `text` is the
  tokenizer's decoding of `ids` (one row of generated ids, EOS and padding after it allowed) and
  `logprobs` the model's log-probability of each of them (generate.token_logprobs): the probability
  of the object's box (its 4 location tokens) times that of the first token after it, its label's
  first word (Pix2Seq scores a detection by its class token). A box the model is unsure of, in
  place or in kind, ranks below the ones it is sure of, as COCO-style AP needs. 1.0 for every
  object when `text` has location tokens that are not among `ids` (a text token spelling one)."""
  ids, logprobs = np.asarray(ids), np.asarray(logprobs, np.float64)
  objects = locations.parse(text, token_index=True)
  positions = np.flatnonzero((ids >= locations.first_id) & (ids < locations.stop))
  found = len(LOC_PATTERN.findall(text)) if isinstance(text, str) else 0
  if found > len(positions):
    return [1.0] * len(objects)
  out = []
  for _, _, k in objects:
    if k is None:  # a box in markup: not decoded from location tokens
      out.append(1.0)
      continue
    first, last = positions[k], positions[k + 3]
    after = min(last + 1, len(ids) - 1)  # the label's first token (the box ends the row: the EOS or last token)
    out.append(float(np.exp(logprobs[first : last + 1].sum() + logprobs[after] * (after > last))))
  return out


def score_predictions(predictions: Sequence[dict], locations) -> dict[str, float]:
  """The grounding metrics of the evaluator's predictions (dicts with task, prediction, references).

  Predictions are parsed from their location tokens (`locations`: the run's LocationTokens), the
  references from their exact boxes in markup, both by `tasks.grounded_pairs`, so a reference is
  never quantised:
  * refer: the first box of the output against the reference's box: `refer_acc50`, `refer_miou`;
  * detect: every output box with its label against the reference's, `detect_map50`, each ranked by
    the prediction's "box_scores" (box_confidences, one per parsed object; the evaluator adds them)
    or, for predictions without them, scored 1 (ties ranked in image and output order, as
    pycocotools ranks equal scores); labels are compared after normalize_answer;
  * grounded_caption / grounded_vqa: `grounded_caption_accuracy` of the (phrase, box) pairs:
    `grounded_caption_acc`, `grounded_vqa_acc` (for VQA: the answer's object named right and boxed).
  Tasks without predictions (or whose references hold no box) give no metric.
  """
  parsed: dict[str, list[tuple[list, list]]] = {}  # task -> [(predicted pairs, reference pairs)]
  scores = []  # per detect prediction: its objects' confidences
  for p in predictions:
    pred, gt = (tasks.grounded_pairs(p["task"], text, locations) for text in (p["prediction"], p["references"][0]))
    parsed.setdefault(p["task"], []).append((pred, gt))
    if p["task"] == "detect":
      scores.append(p.get("box_scores", [1.0] * len(pred)))
      if len(scores[-1]) != len(pred):
        raise ValueError(f"example {p.get('example_id')}: {len(scores[-1])} box_scores for {len(pred)} boxes.")
  out = {}
  refer = [(pred, gt) for pred, gt in parsed.get("refer", []) if gt]
  if refer:
    r = referring([pred[0][1] if pred else None for pred, _ in refer], [gt[0][1] for _, gt in refer])
    out["refer_acc50"], out["refer_miou"] = r["acc50"], r["miou"]
  detect = parsed.get("detect", [])
  if any(gt for _, gt in detect):
    labelled = lambda pairs: [(normalize_answer(label), box) for label, box in pairs]
    out["detect_map50"] = detection_map50(
      [[(*obj, c) for obj, c in zip(labelled(pred), conf)] for (pred, _), conf in zip(detect, scores)],
      [labelled(gt) for _, gt in detect],
    )
  for task in tasks.PHRASE_TASKS:
    items = [(pred, gt) for pred, gt in parsed.get(task, []) if gt]
    if items:
      out[f"{task}_acc"] = grounded_caption_accuracy([pred for pred, _ in items], [gt for _, gt in items])
  return out
