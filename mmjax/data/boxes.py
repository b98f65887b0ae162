"""Bounding boxes and the location tokens a decoder emits for them (Kosmos-2 / PaliGemma style).

Conventions, fixed here so that data, tokenizer, decoding and metrics agree:

* A box is [y0, x0, y1, x1] (PaliGemma order: rows before columns, top-left then bottom-right
  corner). Coordinates are *edges*, so a box may touch the image border: in pixels 0 <= y <= height
  and 0 <= x <= width, normalised 0 <= y, x <= 1.
* `normalize_box` turns an annotation into normalised floats and is the one place that rejects a bad
  box, with a one-line message that starts with the caller's `where` ("manifest.jsonl line 7"), so a
  bad annotation points at its line rather than at a crash deep in the pipeline.
* Zero-area boxes (y0 == y1 or x0 == x1) are rejected: such a box has IoU 0 with every box,
  itself included, so it could never be learnt or scored as a hit, and in annotations it is almost
  always a mistake (a click instead of a drag, a degenerate crop).
* Quantisation: with N bins, bin i covers [i/N, (i+1)/N), and 1.0 (the right or bottom edge) goes to
  bin N-1. A bin decodes to its centre (i + 0.5)/N, so the round trip is off by at most 1/(2N) per
  coordinate. A box smaller than one bin therefore decodes to a zero-area box; with PaliGemma's
  1024 bins that only happens to objects under 0.1% of the image side.
* Location tokens are `num_bins` ids reserved in the decoder's vocabulary, written "<loc0012>" in
  text with at least 4 digits (PaliGemma's spelling). A detection output is a sequence of objects
  separated by " ; ", each 4 location tokens followed by its label.

Quantisation (`box_to_bins`, `bins_to_box`) and `LocationTokens` live in mmjax.location_tokens, on the
lowest floor so that the tokenizer can use them too.

Everything here is plain numpy / Python: nothing depends on a dataset or on JAX.
"""

from __future__ import annotations

import math

from mmjax.location_tokens import Box, _is_number, _show

COORDS = ("y0", "x0", "y1", "x1")


def _prefix(where: str) -> str:
  return f"{where}: " if where else ""


def normalize_box(box, *, image_size: tuple[float, float] | None = None, where: str = "") -> Box:
  """Validates `box` ([y0, x0, y1, x1]) and returns it as four floats in [0, 1].

  image_size=None: the coordinates are already normalised and must lie in [0, 1].
  image_size=(height, width): the coordinates are pixels, 0 <= y <= height and 0 <= x <= width (edges,
  so a box may end exactly at the border), and are divided by height and width.

  Raises a one-line ValueError starting with `where` for: not exactly 4 numbers, a non-finite
  coordinate, y1 < y0 or x1 < x0, a coordinate outside the image, and a zero-area box.
  """
  p = _prefix(where)
  if image_size is not None:
    if (
      isinstance(image_size, str)
      or not hasattr(image_size, "__len__")
      or len(image_size) != 2
      or not all(_is_number(s) and math.isfinite(s) and s > 0 for s in image_size)
    ):
      raise ValueError(f"{p}image_size must be (height, width), two positive numbers, got {_show(image_size)}.")
  if isinstance(box, (str, bytes)) or not hasattr(box, "__len__"):
    raise ValueError(f"{p}box {_show(box)} must be 4 numbers [y0, x0, y1, x1], got a {type(box).__name__}.")
  if len(box) != 4:
    raise ValueError(f"{p}box {_show(box)} must be 4 numbers [y0, x0, y1, x1], got {len(box)} values.")
  if not all(_is_number(v) for v in box):
    raise ValueError(f"{p}box {_show(box)} must be 4 numbers [y0, x0, y1, x1].")
  values = [float(v) for v in box]
  shown = _show(values)
  for name, v in zip(COORDS, values):
    if not math.isfinite(v):
      raise ValueError(f"{p}box {shown} has a non-finite coordinate {name} = {v}.")
  y0, x0, y1, x1 = values
  if y1 < y0:
    raise ValueError(f"{p}box {shown} has y1 < y0 ({y1:g} < {y0:g}); boxes are [y0, x0, y1, x1].")
  if x1 < x0:
    raise ValueError(f"{p}box {shown} has x1 < x0 ({x1:g} < {x0:g}); boxes are [y0, x0, y1, x1].")
  if image_size is None:
    height = width = 1.0
    units = "normalised coordinates must be in [0, 1]"
  else:
    height, width = float(image_size[0]), float(image_size[1])
    units = f"pixel coordinates must be in [0, height {height:g}] x [0, width {width:g}]"
  for name, v in zip(COORDS, values):
    limit = height if name[0] == "y" else width
    if v < 0 or v > limit:
      raise ValueError(f"{p}box {shown} has {name} = {v:g} outside the image ({units}).")
  if y1 == y0:
    raise ValueError(f"{p}box {shown} has zero height (y0 = y1 = {y0:g}); zero-area boxes are rejected.")
  if x1 == x0:
    raise ValueError(f"{p}box {shown} has zero width (x0 = x1 = {x0:g}); zero-area boxes are rejected.")
  return (y0 / height, x0 / width, y1 / height, x1 / width)
