"""The exact image parser of the shapes data: objects read off an image, and text-to-image scores.

``parse_image`` turns an image into objects (colour, shape, centroid, bbox, area), deterministically:

1. Pixels: each pixel goes to the nearest of the background and the six palette colours (RGB
   distance) when that is at most ``NOISE_THRESHOLD`` (40); farther pixels are noise and belong to
   nothing. The closest two palette entries (orange, yellow) are 99.7 apart, so at most one entry is
   ever within the threshold: which one a pixel is never depends on a tie or on the order of a search.
2. Objects: connected components of each colour, 8-connected (a model's jagged diagonal edge stays
   one object; rendered objects are at least one background pixel apart, diagonals included, so 8-
   connectivity never joins two of them). Components under ``min_area`` pixels (an eighth of an
   object's box) are noise. Two same-coloured objects that touch are one component: the parser
   reports one merged object (its shape not one of the three kinds), and the scene check fails, as
   it should: the image does not show two separate objects.
3. Shapes (``classify_shape``), from the component's box and moments, calibrated on the renderer's own
   masks at every image size 32..256 (in brackets: the range over those sizes):
   aspect = box height / width (all 1.0) must be in [0.75, 4/3];
   fill = area / box area (square 1.0, circle [0.59, 0.85], triangle [0.50, 0.52]);
   drop = the centroid's row within the box, 0 top .. 1 bottom (circle, square 0.5; apex-up triangle
   [0.654, 0.667]). Triangle: drop in [0.58, 0.75] and fill in [0.35, 0.70]. Otherwise drop must be in
   [0.42, 0.58] (symmetric): square when fill >= 0.93, circle when fill in [0.55, 0.93). Anything
   else (a diamond: symmetric with fill 0.5; an upside-down triangle; a bar) has shape None, an object
   of no kind, which matches no prompt object.
4. Relations: t2i.relation_holds on the centroids with t2i.relation_margin, the rule the captions
   were sampled with.

``score(spec, image)`` checks one generated image against its prompt's Spec, and ``aggregate`` turns
many scores into the t2i metrics (t2i_object_accuracy, t2i_scene_accuracy, t2i_relation_accuracy).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from mmjax.projects.shapes.scenes import BACKGROUND, COLOR_RGB, COLORS, object_size
from mmjax.projects.shapes.t2i import RELATIONS, Spec, parse_prompt, pixel_centroid, relation_holds, relation_margin

NOISE_THRESHOLD = 40.0
# 8-connectivity (see the module docstring).
_STRUCTURE = np.ones((3, 3), bool)
# Entry 0 is the background; entry k >= 1 is COLORS[k - 1].
_PALETTE = np.asarray([BACKGROUND] + [COLOR_RGB[c] for c in COLORS], np.int32)

# Shape thresholds (module docstring): about midway between the calibrated ranges.
ASPECT_RANGE = (0.75, 4 / 3)
TRIANGLE_DROP = (0.58, 0.75)
TRIANGLE_FILL = (0.35, 0.70)
SYMMETRIC_DROP = (0.42, 0.58)
SQUARE_FILL = 0.93
CIRCLE_FILL = 0.55


@dataclasses.dataclass(frozen=True)
class ParsedObject:
  color: str
  shape: str | None  # None: not one of the shape kinds
  centroid: tuple[float, float]  # (y, x), continuous image coordinates (t2i.pixel_centroid)
  bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1) in pixel edges: rows y0..y1 - 1 (scenes.object_box * S)
  area: int  # pixels


def min_area(image_size: int) -> int:
  """Components smaller than this are noise: an eighth of an object's box (3 pixels at 32x32, 11 at
  64x64), under half the smallest rendered object (a triangle, about half its box)."""
  return max(3, math.ceil(object_size(image_size) ** 2 / 8))


def pixel_classes(image: np.ndarray) -> np.ndarray:
  """int [H, W]: -1 noise, 0 background, k >= 1 the colour COLORS[k - 1] (module docstring)."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
  d2 = ((image.astype(np.int32)[:, :, None, :] - _PALETTE) ** 2).sum(-1)
  nearest = d2.argmin(-1)
  return np.where(d2.min(-1) <= NOISE_THRESHOLD**2, nearest, -1)


def shape_features(ys: np.ndarray, xs: np.ndarray) -> dict[str, float]:
  """aspect, fill and drop (module docstring) of a component's pixels."""
  h = int(ys.max() - ys.min() + 1)
  w = int(xs.max() - xs.min() + 1)
  cy, _ = pixel_centroid(ys, xs)
  return {"aspect": h / w, "fill": len(ys) / (h * w), "drop": (cy - int(ys.min())) / h}


def classify_shape(features: dict[str, float]) -> str | None:
  """ "circle", "square", "triangle" or None, from ``shape_features`` (module docstring)."""
  aspect, fill, drop = features["aspect"], features["fill"], features["drop"]
  if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
    return None
  if TRIANGLE_DROP[0] <= drop <= TRIANGLE_DROP[1]:
    return "triangle" if TRIANGLE_FILL[0] <= fill <= TRIANGLE_FILL[1] else None
  if SYMMETRIC_DROP[0] <= drop < SYMMETRIC_DROP[1]:
    if fill >= SQUARE_FILL:
      return "square"
    if fill >= CIRCLE_FILL:
      return "circle"
  return None


def _image_size(image: np.ndarray) -> int:
  h, w = np.asarray(image).shape[:2]
  if h != w:
    raise ValueError(f"shapes images are square, got {h}x{w}")
  return int(h)


def parse_image(image: np.ndarray, min_pixels: int | None = None) -> list[ParsedObject]:
  """The objects of a uint8 [S, S, 3] image, ordered by colour (COLORS order), then top to bottom,
  then left to right. ``min_pixels``: the noise area (default ``min_area(S)``)."""
  size = _image_size(image)
  min_pixels = min_area(size) if min_pixels is None else int(min_pixels)
  classes = pixel_classes(image)
  out = []
  for k in np.unique(classes[classes > 0]):  # the colours present
    color = COLORS[int(k) - 1]
    labels, _ = ndimage.label(classes == k, structure=_STRUCTURE)
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
      if box is None:
        continue
      ys, xs = np.nonzero(labels[box] == lab)
      if len(ys) < min_pixels:
        continue
      ys, xs = ys + box[0].start, xs + box[1].start
      out.append(
        ParsedObject(
          color=color,
          shape=classify_shape(shape_features(ys, xs)),
          centroid=pixel_centroid(ys, xs),
          bbox=(box[0].start, box[1].start, box[0].stop, box[1].stop),
          area=len(ys),
        )
      )
  return sorted(out, key=lambda o: (COLORS.index(o.color), o.bbox[0], o.bbox[1]))


def relations_between(a: ParsedObject, b: ParsedObject, margin: float) -> list[str]:
  """The relations r for which "a r b" holds (t2i.relation_holds)."""
  return [r for r in RELATIONS if relation_holds(a.centroid, b.centroid, r, margin)]


def score(spec: Spec | str, image: np.ndarray, margin: float | None = None) -> dict:
  """How ``image`` fits the prompt ``spec`` (a Spec, or prompt text for t2i.parse_prompt):

  object_hits: prompt objects found, as a multiset ((colour, shape) pairs, each counted at most as
      often as the image has it); objects: the prompt's object count;
  scene_exact: the image's objects are exactly the prompt's (as a multiset; an object of no shape
      kind counts as an extra object);
  relation_ok: None without a relation; else whether its two objects are identified (the image has
      each (colour, shape) exactly as often as the prompt) and "A rel B" holds for them
      (t2i.relation_holds, margin default t2i.relation_margin(S))."""
  if isinstance(spec, str):
    spec = parse_prompt(spec)
  margin = relation_margin(_image_size(image)) if margin is None else margin
  found = parse_image(image)
  want = collections.Counter(spec.objects)
  have = collections.Counter((o.color, o.shape) for o in found)
  relation_ok = None
  if spec.relation is not None:
    i, rel, j = spec.relation
    a, b = spec.objects[i], spec.objects[j]
    relation_ok = bool(
      have[a] == want[a]
      and have[b] == want[b]
      and any(
        relation_holds(p.centroid, q.centroid, rel, margin)
        for p in found
        if (p.color, p.shape) == a
        for q in found
        if (q.color, q.shape) == b and q is not p
      )
    )
  return {
    "object_hits": sum(min(n, have[k]) for k, n in want.items()),
    "objects": len(spec.objects),
    "scene_exact": have == want,
    "relation_ok": relation_ok,
  }


def aggregate(scores: Iterable[dict]) -> dict[str, float]:
  """The t2i metrics of many ``score`` results: t2i_object_accuracy (prompt objects found / prompt
  objects), t2i_scene_accuracy (the fraction of exact scenes) and t2i_relation_accuracy (the fraction
  of relational prompts whose relation holds; absent when no prompt has a relation)."""
  scores = list(scores)
  if not scores:
    raise ValueError("no scores to aggregate")
  out = {
    "t2i_object_accuracy": sum(s["object_hits"] for s in scores) / sum(s["objects"] for s in scores),
    "t2i_scene_accuracy": sum(bool(s["scene_exact"]) for s in scores) / len(scores),
  }
  rel = [s["relation_ok"] for s in scores if s["relation_ok"] is not None]
  if rel:
    out["t2i_relation_accuracy"] = sum(rel) / len(rel)
  return out


def evaluate(prompts: Sequence[Spec | str], images: Sequence[np.ndarray]) -> dict[str, float]:
  """``aggregate`` of ``score`` over (prompt, image) pairs."""
  if len(prompts) != len(images):
    raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
  return aggregate(score(p, im) for p, im in zip(prompts, images))
