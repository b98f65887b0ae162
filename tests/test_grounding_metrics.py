"""Grounding metrics (mmjax.evaluate.grounding) against hand-computed values, a pixel-counting IoU,
a brute-force matching, and pycocotools' COCOeval for detection AP@0.5."""

import contextlib
import io
import itertools
import random
import warnings

import numpy as np
import pytest

from mmjax.evaluate.grounding import average_precision50, detection_map50, grounded_caption_accuracy, iou, referring

# ------------------------------------------------------------------------------------------- IoU


def test_iou_hand_computed():
  unit = [0, 0, 1, 1]
  assert iou(unit, unit) == 1.0
  assert iou(unit, [2, 2, 3, 3]) == 0.0  # disjoint
  assert iou(unit, [1, 0, 2, 1]) == 0.0  # touching along an edge
  # Half overlap: two 1x2 boxes sharing a 1x1 square: 1 / (2 + 2 - 1).
  assert iou([0, 0, 1, 2], [0, 1, 1, 3]) == pytest.approx(1 / 3, abs=1e-15)
  # Containment: the unit square inside a 2x2 one: 1 / 4.
  assert iou(unit, [0, 0, 2, 2]) == 0.25
  assert iou([0.5, 0.5, 1.5, 1.5], [0, 0, 2, 2]) == 0.25
  assert iou(unit, [0, 0, 1, 2]) == 0.5
  assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7, abs=1e-15)


def test_iou_of_degenerate_boxes_is_zero_without_nan():
  point = [0.5, 0.5, 0.5, 0.5]
  line = [0.5, 0.0, 0.5, 1.0]
  inverted = [1.0, 1.0, 0.0, 0.0]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert iou(point, point) == 0.0
    assert iou(line, line) == 0.0
    assert iou(point, [0, 0, 1, 1]) == 0.0
    assert iou(inverted, inverted) == 0.0  # negative extents clamp to 0, not (-1) * (-1)
    assert iou(inverted, [0, 0, 1, 1]) == 0.0
    assert not np.isnan(iou(np.array([point] * 3), np.array([point] * 3))).any()


def _raster_iou(a, b, size):
  """IoU of integer boxes by counting the cells of a size x size grid each covers."""

  def grid(box):
    out = np.zeros((size, size), bool)
    out[box[0] : box[2], box[1] : box[3]] = True
    return out

  ga, gb = grid(a), grid(b)
  union = np.logical_or(ga, gb).sum()
  return np.logical_and(ga, gb).sum() / union if union else 0.0


def test_iou_matches_pixel_counting_and_broadcasts():
  rng = np.random.default_rng(0)
  size = 12

  def random_box():
    y0, y1 = sorted(rng.integers(0, size + 1, 2))
    x0, x1 = sorted(rng.integers(0, size + 1, 2))
    return [int(y0), int(x0), int(y1), int(x1)]

  a = [[random_box() for _ in range(7)] for _ in range(5)]  # [5, 7, 4]
  b = [random_box() for _ in range(7)]  # [7, 4], broadcast over the 5
  got = iou(np.array(a), np.array(b))
  assert got.shape == (5, 7)
  want = [[_raster_iou(a[i][j], b[j], size) for j in range(7)] for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
  np.testing.assert_allclose(iou(np.array(b), np.array(a)), got, rtol=0, atol=0)  # symmetric
  assert iou(np.array(b)[:, None], np.array(b)[None]).shape == (7, 7)
  with pytest.raises(ValueError):
    iou([0, 0, 1], [0, 0, 1, 1])
  with pytest.raises(ValueError):
    iou([0, 0, float("nan"), 1], [0, 0, 1, 1])


# ------------------------------------------------------------------------------------- referring


def test_referring_hand_case():
  gt = [[0, 0, 1, 1], [0, 0, 1, 2], [0, 0, 1, 1], [0, 0, 1, 1]]
  # IoUs: 1 (identical), 1/3 (half overlap), 0 (no prediction), 0.5 exactly (counts as a hit).
  pred = [[0, 0, 1, 1], [0, 1, 1, 3], None, [0, 0, 1, 2]]
  out = referring(pred, gt)
  assert out["acc50"] == 2 / 4
  assert out["miou"] == pytest.approx((1 + 1 / 3 + 0 + 0.5) / 4, abs=1e-15)
  assert referring([None], [[0, 0, 1, 1]]) == {"acc50": 0.0, "miou": 0.0}
  with pytest.raises(ValueError):
    referring([None], [])
  with pytest.raises(ValueError):
    referring([], [])


# ------------------------------------------------------------------------------------ mAP @ 0.5

A, B = (0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)
FAR = (0.0, 0.6, 0.3, 0.9)  # IoU 0 with A and B


def test_perfect_detections():
  gt = [[("dog", A), ("cat", B)], [("dog", B)]]
  pred = [[("cat", B, 0.3), ("dog", A, 0.9)], [("dog", B, 0.5)]]
  assert average_precision50(pred, gt) == {"dog": 1.0, "cat": 1.0}
  assert detection_map50(pred, gt) == 1.0


# One image, 2 ground-truth boxes, detections ranked TP (0.9), FP (0.8), TP (0.7):
#   cumulative TP 1, 1, 2 and FP 0, 1, 1 -> recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
#   Envelope (max of the precisions at or after each rank): 1, 2/3, 2/3.
#   Recall thresholds 0, 0.01, ..., 0.50 (51 of them) first reach recall at rank 1: precision 1.
#   Thresholds 0.51, ..., 1.00 (50 of them) first reach it at rank 3: precision 2/3.
#   AP = (51 * 1 + 50 * 2/3) / 101 = 253 / 303.
HAND_AP = 253 / 303


def test_hand_computed_ap_with_a_false_positive_in_the_middle():
  gt = [[("dog", A), ("dog", B)]]
  pred = [[("dog", B, 0.7), ("dog", FAR, 0.8), ("dog", A, 0.9)]]
  assert average_precision50(pred, gt)["dog"] == pytest.approx(HAND_AP, abs=1e-12)


def test_duplicate_detection_is_a_false_positive():
  gt = [[("dog", A), ("dog", B)]]
  almost_a = (0.0, 0.0, 0.5, 0.45)  # IoU 0.9 with A, and A is already taken
  pred = [[("dog", A, 0.9), ("dog", almost_a, 0.8), ("dog", B, 0.7)]]
  assert detection_map50(pred, gt) == pytest.approx(HAND_AP, abs=1e-12)
  # Ranked last, the duplicate costs nothing: the envelope stays 1 up to full recall.
  pred = [[("dog", A, 0.9), ("dog", almost_a, 0.6), ("dog", B, 0.7)]]
  assert detection_map50(pred, gt) == 1.0


def test_match_goes_to_the_highest_iou_ground_truth():
  # x-intervals (all boxes span y 0..1): ground truth A = [0, 10] and B = [4, 14], detection p = [3, 13]
  # has IoU 7/13 with A and 9/11 with B, so it takes B; then q = B (IoU 6/14 < 0.5 with A) finds B taken
  # and is a false positive. TP, FP over 2 ground truths: recall 1/2, 1/2, precision 1, 1/2, so only the
  # 51 thresholds up to 0.5 are reached: AP = 51/101. (Matching p to the first overlapping ground truth,
  # A, would have let q take B: AP 1.)
  box = lambda lo, hi: (0.0, lo / 20, 1.0, hi / 20)
  gt = [[("dog", box(0, 10)), ("dog", box(4, 14))]]
  pred = [[("dog", box(3, 13), 0.9), ("dog", box(4, 14), 0.8)]]
  assert iou(box(3, 13), box(0, 10)) == pytest.approx(7 / 13) and iou(box(4, 14), box(0, 10)) < 0.5
  assert detection_map50(pred, gt) == pytest.approx(51 / 101, abs=1e-12)


def test_iou_of_exactly_one_half_is_a_match():
  gt = [[("dog", A)]]
  half = (0.0, 0.0, 0.5, 1.0)  # A is its left half: IoU 0.25 / 0.5
  assert iou(half, A) == 0.5
  assert detection_map50([[("dog", half, 0.9)]], gt) == 1.0


def test_label_without_predictions_gets_zero_and_absent_labels_are_ignored():
  gt = [[("dog", A), ("cat", B)]]
  pred = [[("dog", A, 0.9)]]
  assert average_precision50(pred, gt) == {"dog": 1.0, "cat": 0.0}
  assert detection_map50(pred, gt) == 0.5
  # Detections of a label with no ground truth anywhere ("bird") do not enter the mean.
  pred_extra = [[("dog", A, 0.9), ("bird", B, 0.95), ("bird", A, 0.99)]]
  assert average_precision50(pred_extra, gt) == {"dog": 1.0, "cat": 0.0}
  assert detection_map50(pred_extra, gt) == 0.5
  # A label's detections never match another label's ground truth.
  assert detection_map50([[("cat", A, 0.9), ("dog", B, 0.8)]], gt) == 0.0
  assert detection_map50([[], []], [[("dog", A)], []]) == 0.0


def test_score_ties_keep_image_then_list_order():
  gt = [[("dog", A)]]
  # Equal scores: the stable sort ranks the false positive listed first ahead of the true positive:
  # precision 0, 1/2 at recall 0, 1 -> envelope 1/2 everywhere -> AP 1/2. Listed the other way: AP 1.
  assert detection_map50([[("dog", FAR, 0.5), ("dog", A, 0.5)]], gt) == 0.5
  assert detection_map50([[("dog", A, 0.5), ("dog", FAR, 0.5)]], gt) == 1.0
  # Across images, an earlier image's detection ranks first.
  gt2 = [[], [("dog", A)]]
  assert detection_map50([[("dog", A, 0.5)], [("dog", A, 0.5)]], gt2) == 0.5
  assert detection_map50([[], [("dog", A, 0.5)]], gt2) == 1.0
  assert detection_map50([[("dog", A, 0.5)], [("dog", A, 0.5)]], [[("dog", A)], []]) == 1.0


def test_detection_errors():
  with pytest.raises(ValueError):
    detection_map50([[]], [[], []])
  with pytest.raises(ValueError):
    detection_map50([[("dog", A, 0.5)]], [[]])
  with pytest.raises(ValueError):
    detection_map50([[("dog", A)]], [[("dog", A)]])
  with pytest.raises(ValueError):
    detection_map50([[("dog", A, float("nan"))]], [[("dog", A)]])
  with pytest.raises(ValueError):
    detection_map50([[("dog", (0, 0, 1), 0.5)]], [[("dog", A)]])


def _random_scene(rng, num_images, labels):
  """Ground truth plus detections: jittered copies of the ground truth (IoUs on both sides of 0.5),
  duplicates, random boxes, and labels that are swapped or absent from the ground truth. Scores are
  rounded to one decimal so that ties occur."""

  def jitter(box, s):
    y0, x0, y1, x1 = (float(np.clip(c + rng.normal(0, s), 0, 1)) for c in box)
    return (min(y0, y1), min(x0, x1), max(y0, y1) + 1e-3, max(x0, x1) + 1e-3)

  def random_box():
    y0, x0 = rng.uniform(0, 0.7, 2)
    return (float(y0), float(x0), float(y0 + rng.uniform(0.05, 0.3)), float(x0 + rng.uniform(0.05, 0.3)))

  gts, preds = [], []
  for _ in range(num_images):
    gt = [(str(rng.choice(labels)), random_box()) for _ in range(rng.integers(0, 6))]
    pred = []
    for label, box in gt:
      for _ in range(rng.integers(0, 3)):
        pred.append((label if rng.random() < 0.85 else "other", jitter(box, 0.04), round(float(rng.random()), 1)))
    for _ in range(rng.integers(0, 4)):
      pred.append((str(rng.choice(labels + ["absent"])), random_box(), round(float(rng.random()), 1)))
    gts.append(gt)
    preds.append(pred)
  return preds, gts


def _coco_ap50(preds, gts, labels):
  """{label: AP@0.5} by pycocotools' COCOeval (area "all", one large maxDets), or -1 where it has none."""
  from pycocotools.coco import COCO
  from pycocotools.cocoeval import COCOeval

  H, W = 480.0, 640.0
  cat = {label: k + 1 for k, label in enumerate(labels)}
  xywh = lambda b: [b[1] * W, b[0] * H, (b[3] - b[1]) * W, (b[2] - b[0]) * H]
  anns, dets = [], []
  for i, (pred, gt) in enumerate(zip(preds, gts)):
    for label, box in gt:
      x, y, w, h = xywh(box)
      ann = dict(image_id=i + 1, category_id=cat[label], bbox=[x, y, w, h], area=w * h, iscrowd=0)
      anns.append(dict(ann, id=len(anns) + 1))  # ids from 1: pycocotools treats a matched id 0 as no match
    for label, box, score in pred:
      dets.append(dict(image_id=i + 1, category_id=cat[label], bbox=xywh(box), score=score))
  with contextlib.redirect_stdout(io.StringIO()):
    coco = COCO()
    images = [dict(id=i + 1) for i in range(len(gts))]
    coco.dataset = dict(images=images, annotations=anns, categories=[dict(id=c) for c in cat.values()])
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(dets), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.maxDets = [10000]
    ev.params.areaRng = [[0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    ev.evaluate()
    ev.accumulate()
  precision = ev.eval["precision"][0, :, :, 0, 0]  # [recall threshold, category]
  return {l: float(precision[:, cat[l] - 1].mean()) if precision[0, cat[l] - 1] > -1 else -1.0 for l in labels}


@pytest.mark.parametrize("seed", range(6))
def test_detection_map50_matches_pycocotools(seed):
  rng = np.random.default_rng(seed)
  labels = ["dog", "cat", "ball"]
  preds, gts = _random_scene(rng, num_images=8, labels=labels)
  if not any(preds) or not any(gts):
    pytest.skip("degenerate scene")
  ours = average_precision50(preds, gts)
  theirs = _coco_ap50(preds, gts, labels + ["other", "absent"])
  assert set(ours) == {l for l, v in theirs.items() if v > -1}
  for label, ap in ours.items():
    assert ap == pytest.approx(theirs[label], abs=1e-9), label
  present = [v for v in theirs.values() if v > -1]
  assert detection_map50(preds, gts) == pytest.approx(sum(present) / len(present), abs=1e-9)
  assert 0 < detection_map50(preds, gts) < 1  # the scenes are neither trivial nor hopeless


# ----------------------------------------------------------------------- grounded captions


def test_grounded_caption_hand_case():
  near_a = (0.0, 0.0, 0.5, 0.45)  # IoU 0.9 with A
  gt = [[("a dog", A), ("a ball", B)], [("cat", B)]]
  # Caption 1: "A Dog." normalises to "a dog" (hit); "ball" is not the phrase "a ball" (miss).
  # Caption 2: no prediction (miss). 1 of 3 ground-truth phrases.
  pred = [[("A Dog.", near_a), ("ball", B)], []]
  assert grounded_caption_accuracy(pred, gt) == 1 / 3
  # Right phrase, wrong place; right place, wrong phrase.
  assert grounded_caption_accuracy([[("a dog", B), ("a ball", A)], [("dog", B)]], gt) == 0.0
  assert grounded_caption_accuracy([[("a ball", B), ("a dog", A)], [("cat", B), ("cat", B)]], gt) == 1.0
  # Both sides are normalised.
  assert grounded_caption_accuracy([[("the dog", A)]], [[("The Dog!", A)]]) == 1.0


def test_each_predicted_pair_is_used_once():
  gt = [[("dog", A), ("dog", A)]]
  assert grounded_caption_accuracy([[("dog", A)]], gt) == 0.5
  assert grounded_caption_accuracy([[("dog", A), ("dog", A)]], gt) == 1.0
  # Maximum matching, not greedy in ground-truth order: p1 fits both ground truths, p2 only the
  # first. Greedy would give the first to p1 and leave the second unmatched (1/2).
  gt = [[("dog", (0.0, 0.0, 0.5, 0.5)), ("dog", (0.0, 0.2, 0.5, 0.7))]]
  p1 = (0.0, 0.1, 0.5, 0.6)  # IoU 0.4/0.6 = 2/3 with both
  p2 = (0.0, 0.0, 0.5, 0.45)  # IoU 0.9 with the first, 0.25/0.7 with the second
  assert iou(p1, gt[0][0][1]) > 0.5 and iou(p1, gt[0][1][1]) > 0.5 and iou(p2, gt[0][1][1]) < 0.5
  assert grounded_caption_accuracy([[("dog", p1), ("dog", p2)]], gt) == 1.0


def _brute_force_caption(pred, gt):
  found = total = 0
  for p_pairs, g_pairs in zip(pred, gt):
    total += len(g_pairs)
    hit = lambda g, p: p is not None and g_pairs[g][0] == p_pairs[p][0] and iou(g_pairs[g][1], p_pairs[p][1]) >= 0.5
    slots = list(range(len(p_pairs))) + [None] * len(g_pairs)
    best = 0
    for assignment in itertools.permutations(slots, len(g_pairs)):
      best = max(best, sum(hit(g, p) for g, p in enumerate(assignment)))
    found += best
  return found / total


def test_grounded_caption_matches_brute_force():
  rng = random.Random(3)
  grid = [(0.0, x / 10, 1.0, x / 10 + 0.4) for x in range(0, 7, 1)]  # overlapping strips: many IoU edges
  for _ in range(60):
    gt = [[(rng.choice("ab"), rng.choice(grid)) for _ in range(rng.randint(0, 4))] for _ in range(3)]
    if not any(gt):
      continue
    pred = [[(rng.choice("ab"), rng.choice(grid)) for _ in range(rng.randint(0, 4))] for _ in range(3)]
    assert grounded_caption_accuracy(pred, gt) == pytest.approx(_brute_force_caption(pred, gt), abs=1e-12)


def test_grounded_caption_errors():
  with pytest.raises(ValueError):
    grounded_caption_accuracy([[]], [[], []])
  with pytest.raises(ValueError):
    grounded_caption_accuracy([[("dog", A)]], [[]])


# ------------------------------------------------------------------ the evaluator's grounding metrics

from mmjax.evaluate.evaluator import score as score_predictions  # noqa: E402
from mmjax.location_tokens import LocationTokens  # noqa: E402

# 4 bins: a bin decodes to its centre, 0.125, 0.375, 0.625 or 0.875.
LOC4 = LocationTokens.for_vocab(100, 4)


def _pred(task, prediction, reference):
  return {"task": task, "qtype": task, "prompt": "", "prediction": prediction, "references": [reference]}


def test_score_grounding_hand_computed():
  tok = LOC4.text
  preds = [
    # refer: an exact hit (the reference is the bins' centres), IoU 0.25, and no box at all.
    _pred("refer", tok([0, 0, 1, 1]), "<box>0.125 0.125 0.375 0.375</box>"),
    _pred("refer", tok([0, 0, 1, 1]), "<box>0.0 0.0 0.5 0.5</box>"),  # 0.0625 / 0.25
    _pred("refer", "nothing", "<box>0.5 0.5 1.0 1.0</box>"),
    # detect, two images. Circle: 2 ground truths, detections hit, hit, miss (precision 1, 1, 2/3 at
    # recall 0.5, 1, 1): AP 1. Square: one ground truth, one detection elsewhere: AP 0. mAP 0.5.
    _pred(
      "detect",
      f"{tok([0, 0, 1, 1])} circle ; {tok([3, 3, 3, 3])} square",
      "<box>0.125 0.125 0.375 0.375</box> circle ; <box>0.625 0.125 0.875 0.375</box> square",
    ),
    _pred(
      "detect", f"{tok([1, 1, 2, 2])} Circle ; {tok([3, 0, 3, 0])} circle", "<box>0.375 0.375 0.625 0.625</box> circle"
    ),
    # grounded captions: 3 reference phrases; found: "a dog" (case and spacing aside) and "a cat";
    # "a bird" has the wrong box.
    _pred(
      "grounded_caption",
      f"<phrase>A  dog</phrase>{tok([0, 0, 1, 1])} left, <phrase>a bird</phrase>{tok([3, 3, 3, 3])}",
      "<phrase>a dog</phrase><box>0.125 0.125 0.375 0.375</box> left, "
      "<phrase>a bird</phrase><box>0.125 0.625 0.375 0.875</box>",
    ),
    _pred(
      "grounded_caption",
      f"<phrase>a cat</phrase>{tok([2, 2, 3, 3])}",
      "<phrase>a cat</phrase><box>0.625 0.625 0.875 0.875</box>",
    ),
    # grounded VQA: the right object in the wrong place, then the wrong object in the right place.
    _pred(
      "grounded_vqa",
      f"<phrase>a dog</phrase>{tok([3, 3, 3, 3])}",
      "<phrase>a dog</phrase><box>0.125 0.125 0.375 0.375</box>",
    ),
    _pred(
      "grounded_vqa",
      f"<phrase>a cat</phrase>{tok([0, 0, 1, 1])}",
      "<phrase>a dog</phrase><box>0.125 0.125 0.375 0.375</box>",
    ),
    _pred(
      "grounded_vqa",
      f"<phrase>a dog</phrase>{tok([0, 0, 1, 1])}",
      "<phrase>a dog</phrase><box>0.125 0.125 0.375 0.375</box>",
    ),
  ]
  m = score_predictions(preds, "test", LOC4)
  assert m["test/refer_acc50"] == pytest.approx(1 / 3, abs=1e-12)
  assert m["test/refer_miou"] == pytest.approx((1 + 0.25 + 0) / 3, abs=1e-12)
  assert m["test/detect_map50"] == pytest.approx(0.5, abs=1e-12)
  assert m["test/grounded_caption_acc"] == pytest.approx(2 / 3, abs=1e-12)
  assert m["test/grounded_vqa_acc"] == pytest.approx(1 / 3, abs=1e-12)
  assert not any("vqa_accuracy" in k for k in m)  # grounding answers are not scored as VQA strings


def test_score_grounding_needs_location_tokens():
  with pytest.raises(ValueError, match="config.data.location_bins"):
    score_predictions([_pred("refer", "", "<box>0.0 0.0 0.5 0.5</box>")], "test", None)


def test_box_confidences_hand_computed():
  """Each parsed object's confidence is exp(the log-probs of its 4 location ids + of the id after
  them), found through the text's location tokens even when parse skips a malformed run first."""
  from mmjax.evaluate.grounding import box_confidences

  loc = [100 + b for b in range(4)]  # LOC4's ids
  x, dog, semi, cat, eos, pad = 5, 6, 7, 8, 1, 0
  ids = [loc[0], loc[1], x, semi, loc[0], loc[0], loc[1], loc[1], dog, semi, loc[2], loc[2], loc[3], loc[3], cat]
  ids += [eos, pad]
  t = LOC4.text
  text = f"{t([0, 1])} x ; {t([0, 0, 1, 1])} dog ; {t([2, 2, 3, 3])} cat"
  assert [lab for lab, _ in LOC4.parse(text)] == ["dog", "cat"]  # the 2-token run is skipped
  lp = -np.random.default_rng(0).uniform(0.05, 2.0, len(ids))
  got = box_confidences(text, ids, lp, LOC4)
  want = [np.exp(lp[4] + lp[5] + lp[6] + lp[7] + lp[8]), np.exp(lp[10] + lp[11] + lp[12] + lp[13] + lp[14])]
  np.testing.assert_allclose(got, want, rtol=1e-12)
  # A box that ends the row has no label id after it: its 4 ids alone.
  assert box_confidences(t([0, 0, 1, 1]), [loc[0], loc[0], loc[1], loc[1]], lp[:4], LOC4) == pytest.approx(
    [np.exp(lp[:4].sum())], rel=1e-12
  )
  # Location tokens in the text that are not among the ids (a text token spelling one): no confidences.
  assert box_confidences(text, [x] * len(ids), lp, LOC4) == [1.0, 1.0]
  assert box_confidences("<box>0.1 0.1 0.5 0.5</box> dog", [x, dog], lp[:2], LOC4) == [1.0]  # markup


def test_detections_ranked_by_their_box_scores():
  """One dog: a miss listed first, then the hit. Equal scores rank the miss first (AP 0.5: the
  precision envelope at full recall); scores that put the hit first give AP 1; the miss ranked
  first by score gives 0.5 again. A box_scores list of the wrong length is an error naming the example."""
  t = LOC4.text
  text = f"{t([2, 2, 3, 3])} dog ; {t([0, 0, 1, 1])} dog"
  ref = "<box>0.125 0.125 0.375 0.375</box> dog"
  pred = dict(_pred("detect", text, ref), example_id=7)
  assert score_predictions([pred], "test", LOC4)["test/detect_map50"] == pytest.approx(0.5, abs=1e-12)
  hit_first = dict(pred, box_scores=[0.2, 0.9])
  assert score_predictions([hit_first], "test", LOC4)["test/detect_map50"] == pytest.approx(1.0, abs=1e-12)
  miss_first = dict(pred, box_scores=[0.9, 0.2])
  assert score_predictions([miss_first], "test", LOC4)["test/detect_map50"] == pytest.approx(0.5, abs=1e-12)
  with pytest.raises(ValueError, match="example 7: 1 box_scores for 2 boxes"):
    score_predictions([dict(pred, box_scores=[0.5])], "test", LOC4)
