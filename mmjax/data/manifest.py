"""Bring-your-own-data manifests: JSONL -> records of the shared schema (see ``schema.py``).

One JSON object per line (blank lines are ignored)::

  {"image": "imgs/a.png", "question": "what is this?", "answer": "cat"}     # VQA
  {"image": "imgs/a.png", "caption": "a cat on a mat"}                      # captioning
  {"image": "imgs/b.jpg", "caption": "...", "split": "validation"}          # explicit split

* Allowed keys: image (required), question + answer (together), caption, split (optional: train,
  validation or test). A line may carry a question/answer pair, a caption, or both.
* ``image`` paths are relative to the manifest's folder (absolute paths are kept as is).
* All lines of the same image are grouped into one record (id = the normalised relative path).
  Lines of one image must not name different splits.
* Images without an explicit split are assigned by a seeded permutation of the image ids:
  80% train / 10% validation / 10% test (rounded; tiny manifests put everything in train).
* Images of any mode and size are converted to RGB (alpha composited over white) and resized to a
  square ``image_size`` x ``image_size`` with bilinear filtering (aspect ratio is not preserved).

Every line is validated (including opening/decoding every image) before anything is written; any
problem raises ``ValueError("<manifest>:<line>: key '<key>': <problem>")``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image

ALLOWED_KEYS = ("image", "question", "answer", "caption", "split")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass
class ManifestRecord:
  id: str
  path: str  # absolute image path
  split: str | None = None
  split_line: int = 0
  questions: list = dataclasses.field(default_factory=list)
  answers: list = dataclasses.field(default_factory=list)
  captions: list = dataclasses.field(default_factory=list)

  def to_example(self, image_size: int) -> dict:
    return {
        "image": load_image(self.path, image_size),
        "questions": list(self.questions),
        "answers": list(self.answers),
        "question_types": ["vqa"] * len(self.questions),
        "captions": list(self.captions),
        "id": self.id,
    }


def manifest_hash(manifest_path: str | os.PathLike) -> str:
  """Short hash of the manifest's bytes (keys the prepared dataset's directory)."""
  with open(manifest_path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load_image(path: str, image_size: int) -> np.ndarray:
  """Reads any PIL-readable image as uint8 RGB [image_size, image_size, 3]."""
  with Image.open(path) as im:
    im.load()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
      im = im.convert("RGBA")
      bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
      im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    if im.size != (image_size, image_size):
      im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def _err(path, lineno, key, msg):
  where = f"{path}:{lineno}"
  return ValueError(f"{where}: key {key!r}: {msg}" if key else f"{where}: {msg}")


def _text(obj, key, path, lineno):
  v = obj[key]
  if not isinstance(v, str):
    raise _err(path, lineno, key, f"must be a string, got {type(v).__name__}")
  v = v.strip()
  if not v:
    raise _err(path, lineno, key, "is empty")
  return v


def parse_manifest(manifest_path: str | os.PathLike, seed: int = 0,
                   check_images: bool = True) -> dict[str, list[ManifestRecord]]:
  """Validates the whole manifest and returns {split: [ManifestRecord, ...]} (all three splits)."""
  manifest_path = os.fspath(manifest_path)
  base = os.path.dirname(os.path.abspath(manifest_path))
  try:
    with open(manifest_path, "r", encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{manifest_path}: cannot read manifest: {e}") from e
  records: dict[str, ManifestRecord] = {}
  image_ok: dict[str, None] = {}
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise _err(manifest_path, lineno, None, f"invalid JSON: {e}") from e
    if not isinstance(obj, dict):
      raise _err(manifest_path, lineno, None, "each line must be a JSON object")
    for k in obj:
      if k not in ALLOWED_KEYS:
        raise _err(manifest_path, lineno, k, f"unknown key (allowed: {', '.join(ALLOWED_KEYS)})")
    if "image" not in obj:
      raise _err(manifest_path, lineno, "image", "missing")
    rel = _text(obj, "image", manifest_path, lineno)
    abs_path = os.path.normpath(os.path.join(base, rel))
    rid = os.path.relpath(abs_path, base).replace(os.sep, "/")
    if abs_path not in image_ok:
      if not os.path.isfile(abs_path):
        raise _err(manifest_path, lineno, "image", f"file not found: {abs_path}")
      if check_images:
        try:
          with Image.open(abs_path) as im:
            im.load()
        except Exception as e:  # PIL raises many kinds
          raise _err(manifest_path, lineno, "image", f"cannot read image {abs_path}: {e}") from e
      image_ok[abs_path] = None
    has_q, has_a, has_c = "question" in obj, "answer" in obj, "caption" in obj
    if has_q and not has_a:
      raise _err(manifest_path, lineno, "answer", "question without answer")
    if has_a and not has_q:
      raise _err(manifest_path, lineno, "question", "answer without question")
    if not has_q and not has_c:
      raise _err(manifest_path, lineno, "question",
                 "line has neither a question/answer pair nor a caption")
    rec = records.get(rid)
    if rec is None:
      rec = records[rid] = ManifestRecord(id=rid, path=abs_path)
    if "split" in obj:
      split = obj["split"]
      if split not in SPLITS:
        raise _err(manifest_path, lineno, "split", f"{split!r} is not one of {', '.join(SPLITS)}")
      if rec.split is not None and rec.split != split:
        raise _err(manifest_path, lineno, "split",
                   f"image {rid} already assigned to {rec.split!r} on line {rec.split_line}")
      rec.split, rec.split_line = split, lineno
    if has_q:
      rec.questions.append(_text(obj, "question", manifest_path, lineno))
      rec.answers.append(_text(obj, "answer", manifest_path, lineno))
    if has_c:
      rec.captions.append(_text(obj, "caption", manifest_path, lineno))
  if not records:
    raise ValueError(f"{manifest_path}: manifest has no records")

  # Seeded 80/10/10 split of the images without an explicit split.
  free = sorted(rid for rid, r in records.items() if r.split is None)
  perm = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
  n_val = int(round(SPLIT_FRACTIONS[1] * len(perm)))
  n_test = int(round(SPLIT_FRACTIONS[2] * len(perm)))
  n_train = len(perm) - n_val - n_test
  for i, rid in enumerate(perm):
    records[rid].split = ("train" if i < n_train else
                          "validation" if i < n_train + n_val else "test")
  out = {s: [] for s in SPLITS}
  for rid in sorted(records):
    out[records[rid].split].append(records[rid])
  return out
