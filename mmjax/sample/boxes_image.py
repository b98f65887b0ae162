"""Boxes on images: drawing predicted (and reference) boxes, and the sample command's detection pieces.

Boxes are [y0, x0, y1, x1] normalised to [0, 1] (mmjax.location_tokens). An image of H x W pixels is
drawn upscaled by an integer `scale` (nearest neighbour, so its pixels stay visible); a box then
covers the canvas pixels [round(y0 * H * scale), round(y1 * H * scale)) in rows and the same in
columns, and its outline is drawn on that region's border pixels, inward, so that it never leaves
the canvas, not even for a box on the image's edge. Predicted boxes are solid, in colours that cycle
so that neighbours differ, each with its label above it (below or inside when there is no room);
reference boxes are dashed white and black, drawn over the predictions (a prediction right on its
reference shows through the gaps), without labels.

Plain PIL / numpy: no JAX, so reports can be drawn anywhere.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmjax.location_tokens import Box, detect_prompt

# Distinct saturated colours (none black or white, which the references use); consecutive boxes differ.
PALETTE = (
  (230, 25, 75),
  (60, 180, 75),
  (255, 225, 25),
  (0, 130, 200),
  (245, 130, 48),
  (145, 30, 180),
  (70, 240, 240),
  (240, 50, 230),
  (210, 245, 60),
  (0, 128, 128),
)
REFERENCE_COLORS = ((255, 255, 255), (0, 0, 0))  # alternate dashes: visible on any background
# Labels longer than this are cut: a label is a name, and a runaway generation must not cover the image.
MAX_LABEL_CHARS = 60
# The sample command upscales a small original image until its longer side is at least this, so
# that labels stay readable next to its boxes.
MIN_DRAWN_SIDE = 384


def draw_boxes(
  image,
  boxes: Sequence[tuple[str, Box]],
  scale: int = 1,
  references: Sequence[tuple[str, Box]] = (),
  width: int | None = None,
) -> Image.Image:
  """`image` (uint8 H x W x 3, or H x W) upscaled `scale` times with `boxes` [(label, box)] drawn on
  it, and `references` [(label, box)] dashed (module docstring). width: outline pixels (None: about
  1 per 192 canvas pixels of the shorter side, at least 1)."""
  if not isinstance(scale, int) or scale < 1:
    raise ValueError(f"scale must be an integer >= 1, got {scale!r}.")
  canvas = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.Resampling.NEAREST)
  if width is None:
    width = max(1, min(canvas.size) // 192)
  draw = ImageDraw.Draw(canvas)
  rects = [_rect(box, canvas.size) for _, box in boxes]
  for i, rect in enumerate(rects):
    for side in _sides(rect, width):
      draw.rectangle(side, fill=PALETTE[i % len(PALETTE)])
  dash = max(3, 2 * width)
  for _, box in references:
    _dashed_rect(draw, _rect(box, canvas.size), width, dash)
  # Labels last, so that another box's outline never runs through one.
  font = _font(min(canvas.size))
  for i, ((label, _), rect) in enumerate(zip(boxes, rects)):
    _label(draw, font, _short(label), rect, PALETTE[i % len(PALETTE)], width, canvas.size)
  return canvas


def _rect(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
  """The canvas pixels (left, top, right, bottom; inclusive) of a normalised box, inside the canvas."""
  w, h = size
  y0, x0, y1, x1 = (float(v) for v in box)
  edge = lambda v, n: min(max(math.floor(v * n + 0.5), 0), n)
  l, r = edge(x0, w), edge(x1, w) - 1
  t, b = edge(y0, h), edge(y1, h) - 1
  # A zero-area box (equal bins decode to one point) is still drawn, one pixel wide.
  l, t = min(l, w - 1), min(t, h - 1)
  return l, t, max(r, l), max(b, t)


def _sides(rect, width: int) -> list[tuple[int, int, int, int]]:
  """The top, bottom, left and right sides of an outline `width` pixels thick inward from `rect`'s
  border pixels, as filled rectangles (PIL's own outline draws a stray row on one-pixel boxes)."""
  l, t, r, b = rect
  return [
    (l, t, r, min(t + width - 1, b)),
    (l, max(b - width + 1, t), r, b),
    (l, t, min(l + width - 1, r), b),
    (max(r - width + 1, l), t, r, b),
  ]


def _dashed_rect(draw: ImageDraw.ImageDraw, rect, width: int, dash: int) -> None:
  """An outline (`_sides`) of dashes `dash` pixels long with equal gaps, alternating REFERENCE_COLORS."""
  k = 0
  for i, (l, t, r, b) in enumerate(_sides(rect, width)):
    horizontal = i < 2
    start, stop = (l, r) if horizontal else (t, b)
    for s in range(start, stop + 1, 2 * dash):
      e = min(s + dash - 1, stop)
      draw.rectangle((s, t, e, b) if horizontal else (l, s, r, e), fill=REFERENCE_COLORS[k % 2])
      k += 1


def _font(side: int):
  size = max(11, side // 40)
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: one bitmap size
    return ImageFont.load_default()


def _short(label) -> str:
  label = " ".join(str(label).split())
  return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 3] + "..."


def _label(draw, font, label: str, rect, colour, width: int, size: tuple[int, int]) -> None:
  """`label` on a patch of the box's colour: above the box, else below it, else inside its top."""
  if not label:
    return
  l, t, r, b = rect
  x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
  tw, th = x1 - x0 + 2, y1 - y0 + 2
  if t - th >= 0:
    top = t - th
  elif b + 1 + th <= size[1]:
    top = b + 1
  else:
    top = min(t + width, max(size[1] - th, 0))
  left = max(min(l, size[0] - tw), 0)
  draw.rectangle((left, top, left + tw - 1, top + th - 1), fill=colour)
  ink = (0, 0, 0) if sum(c * w for c, w in zip(colour, (0.299, 0.587, 0.114))) > 140 else (255, 255, 255)
  draw.text((left + 1 - x0, top + 1 - y0), label, fill=ink, font=font)


def named(boxes: Sequence[tuple[str, Box]], labels: Sequence[str]) -> list[tuple[str, Box]]:
  """`boxes` with an empty label (a referring answer: a box alone) named after the prompt's one
  label; with several labels there is no telling which, and they stay empty."""
  if len(labels) != 1:
    return list(boxes)
  return [(label or labels[0], box) for label, box in boxes]


def prompt_labels(prompt: str) -> list[str]:
  """The labels of a detection prompt "detect a ; b" (mmjax.location_tokens.detect_prompt); [] for
  any other prompt."""
  if not prompt.startswith("detect "):
    return []
  return [label.strip() for label in prompt[len("detect ") :].split(";") if label.strip()]


def detection_prompt(prompt: str) -> tuple[str, list[str]]:
  """(model prompt, labels) of the sample command's --prompt for --task=detect: "black dog" asks
  "detect black dog"; "cat ; dog" lists labels; a prompt starting with "detect " is taken as it is.
  Labels are what a box alone (a referring answer) is named after."""
  text = " ".join(str(prompt).split())
  if text.startswith("detect "):
    labels = prompt_labels(text)
    if labels:
      return text, labels
  else:
    labels = [label.strip() for label in text.split(";") if label.strip()]
    if labels:
      return detect_prompt(labels), labels
  raise ValueError(
    f"--prompt={prompt!r} names nothing to detect: give a label or referring expression, e.g. "
    "--prompt='black dog', or several separated by ' ; '."
  )


def check_detect_config(config) -> None:
  """--task=detect needs a model with location tokens (config.data.location_bins > 0)."""
  bins = int(config.data.location_bins)
  if bins <= 0:
    raise ValueError(
      f"--task=detect: this model has no location tokens (its config.data.location_bins is {bins}), so it "
      "cannot output boxes; train with config.data.location_bins > 0 (experiments/configs/grounding.py)."
    )


def pixel_box(box, height: int, width: int) -> tuple[int, int, int, int]:
  """A normalised box in pixels of an H x W image, [y0, x0, y1, x1] rounded to the nearest pixel edge
  (the model reads the image squashed to a square, so the normalised box maps to it axis by axis)."""
  y0, x0, y1, x1 = (float(v) for v in box)
  r = lambda v, n: math.floor(v * n + 0.5)
  return r(y0, height), r(x0, width), r(y1, height), r(x1, width)


def box_lines(boxes: Sequence[tuple[str, Box]], height: int, width: int) -> list[str]:
  """One line per box: its label, the box normalised and in pixels of the H x W image."""
  out = []
  for label, box in boxes:
    norm = ", ".join(f"{float(v):.3f}" for v in box)
    pix = ", ".join(str(v) for v in pixel_box(box, height, width))
    out.append(f"{label or '(no label)'}: [{norm}] = pixels [{pix}] ([y0, x0, y1, x1] of {width}x{height})")
  return out


def drawn_scale(height: int, width: int) -> int:
  """The integer upscaling that brings the longer side to at least MIN_DRAWN_SIDE (1 for large images)."""
  return max(1, math.ceil(MIN_DRAWN_SIDE / max(height, width, 1)))


def boxes_path(image_path: str) -> str:
  """Where the sample command draws an image's boxes by default: `<image stem>_boxes.png` beside it."""
  stem = os.path.splitext(os.path.basename(image_path))[0]
  return os.path.join(os.path.dirname(image_path), f"{stem}_boxes.png")
