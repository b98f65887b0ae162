"""Sample reports: an image grid (PNG) with the prompt, answer and reference under each image,
and the same as text, for eyeballing what a model does on a dataset split.

A grounding prediction (mmjax.data.tasks.GROUNDING_TASKS) also shows its boxes on its image: the
predicted ones solid with their labels, the reference's dashed (mmjax.sample.boxes_image).
"""

from __future__ import annotations

import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw

from mmjax.data.tasks import grounded_pairs
from mmjax.sample import boxes_image


def write_report(
  out_dir: str, data, split: str, predictions: list[dict], n: int, columns: int = 4, scale: int = 3
) -> tuple[str, str]:
  """Writes out_dir/{split}_samples.png and .txt for n predictions (the first of each task in turn:
  spread_over_tasks); returns the paths.

  Boxes are read with the run's location tokens, `data.tokenizer.locations` (none: no boxes)."""
  os.makedirs(out_dir, exist_ok=True)
  chosen = spread_over_tasks(predictions, n)
  lines = []
  for p in chosen:
    lines.append(
      f"[{p['example_id']}] ({p['qtype']}) {p['prompt']}\n  model:     {p['prediction']}\n"
      f"  reference: {' | '.join(p['references'])}"
    )
  txt_path = os.path.join(out_dir, f"{split}_samples.txt")
  with open(txt_path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  png_path = os.path.join(out_dir, f"{split}_samples.png")
  if chosen:
    # A generated image (text-to-image) is shown instead of the dataset's.
    images = [p["image"] if "image" in p else data.image(split, p["example_id"]) for p in chosen]
    texts = [f"Q: {p['prompt']}\nA: {p['prediction']}\nref: {p['references'][0]}" for p in chosen]
    locations = getattr(getattr(data, "tokenizer", None), "locations", None)
    boxes = [prediction_boxes(p, locations) for p in chosen]
    grid_image(images, texts, columns, scale, boxes).save(png_path)
  return png_path, txt_path


def spread_over_tasks(predictions: list[dict], n: int) -> list[dict]:
  """n predictions taken in turn from each task's, in order (the evaluator sorts a split by task,
  so the first n alone would show one task)."""
  by_task: dict[str, list[dict]] = {}
  for p in predictions:
    by_task.setdefault(p.get("task", ""), []).append(p)
  chosen, queues = [], [list(reversed(v)) for v in by_task.values()]
  while len(chosen) < n and any(queues):
    for q in queues:
      if q and len(chosen) < n:
        chosen.append(q.pop())
  return chosen


def prediction_boxes(prediction: dict, locations) -> tuple[list, list] | None:
  """(predicted, reference) [(label, box)] of a grounding prediction; None for other tasks. A box
  alone (a referring answer) is named after the prompt's expression."""
  task = prediction.get("task", "")
  predicted = None if locations is None else grounded_pairs(task, prediction["prediction"], locations)
  if predicted is None:
    return None
  refs = prediction["references"]
  reference = grounded_pairs(task, refs[0], locations) if refs else []
  labels = boxes_image.prompt_labels(str(prediction.get("prompt", "")))
  return boxes_image.named(predicted, labels), boxes_image.named(reference, labels)


def grid_image(
  images: list[np.ndarray], texts: list[str], columns: int, scale: int, boxes: list | None = None
) -> Image.Image:
  """Cells of images upscaled `scale` times with their text under them; boxes: per image, None or
  (predicted, reference) [(label, box)] drawn on it."""
  h, w = images[0].shape[:2]
  cell_w, text_h = w * scale, 14 * 7
  rows = -(-len(images) // columns)
  canvas = Image.new("RGB", (columns * cell_w, rows * (h * scale + text_h)), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (img, text) in enumerate(zip(images, texts)):
    x, y = (i % columns) * cell_w, (i // columns) * (h * scale + text_h)
    cell_boxes = boxes[i] if boxes else None
    if cell_boxes is None:
      cell = Image.fromarray(np.asarray(img, np.uint8)).resize((cell_w, h * scale), Image.NEAREST)
    else:
      predicted, reference = cell_boxes
      cell = boxes_image.draw_boxes(img, predicted, scale, references=reference)
    canvas.paste(cell, (x, y))
    wrapped = "\n".join(textwrap.fill(line, width=max(cell_w // 7, 10)) for line in text.split("\n"))
    draw.multiline_text((x + 2, y + h * scale + 2), wrapped, fill="black", spacing=1)
  return canvas
