"""Bring-your-own-data manifests: JSONL -> records of the shared schema (see ``schema.py``).

One JSON object per line (blank lines are ignored)::

  {"image": "imgs/a.png", "question": "what is this?", "answer": "cat"}     # VQA
  {"image": "imgs/a.png", "caption": "a cat on a mat"}                      # captioning
  {"image": "imgs/b.jpg", "caption": "...", "split": "validation"}          # explicit split
  {"image": "clips/c.png", "audio": "clips/c.wav", "video": "clips/c_frames", "caption": "..."}
  {"image": "imgs/a.png", "boxes": [{"label": "cat", "box": [12, 30, 200, 180]}]}  # pixels
  {"image": "imgs/a.png", "boxes": [{"label": "dog", "box": [0.1, 0.5, 0.9, 1.0]}], "box_format": "normalized"}
  {"image": "imgs/a.png", "question": "what is it?", "answer": "dog", "answers": ["dog", "dog", "puppy"]}  # humans
  {"image": "imgs/a.png", "refer": [{"expression": "the dog on the left", "box": [12, 30, 200, 180]}]}

* Allowed keys: image (required), question + answer (together; answers optional with them),
  caption, boxes and refer (with box_format optional), split (optional: train, validation or
  test), audio and video (optional). A line may carry any of a question/answer pair, a caption,
  boxes and referring expressions, but at least one of them.
* ``answers`` (with a question): the question's human reference answers, a list of at least 2
  strings (VQAv2: the 10 annotators'), kept exactly as given. ``answer`` stays the training target
  (VQAv2: its multiple_choice_answer); the evaluator scores a question that has human answers with
  the official VQA accuracy against them (evaluate/vqa.py), one without by exact match against
  ``answer``. A prepared dataset stores them only when some line has them (``reference_answers``
  below), so a manifest without ``answers`` is prepared exactly as before.
* ``image``, ``audio`` and ``video`` paths are relative to the manifest's folder (absolute paths
  are kept as is).
* All lines of the same image are grouped into one record (id = the normalised relative path).
  Lines of one image must not name different splits, audio files or videos.
* Images without an explicit split are assigned by a seeded permutation of the image ids:
  80% train / 10% validation / 10% test (rounded: it takes 6 such images to put one in each of
  validation and test; fewer all go to train).
* A split may end up without records (e.g. no "test" lines and fewer than 6 images without a
  split): it is then left out of the prepared dataset, and asking for it later is an error naming
  the split and the manifest (``prepare.check_split``). The train split must have records (the
  model and the tokenizer are trained on it): a manifest without any is an error here, before
  anything is written.
* Images of any mode and size are converted to RGB (alpha composited over white) and resized to a
  square ``image_size`` x ``image_size`` with bilinear filtering (aspect ratio is not preserved).
* ``audio`` (the record's sound, stored as ``scene_audio``): a PCM WAV file (8/16/24/32-bit, mono
  or multi-channel, any sample rate), averaged to mono and resampled to the dataset's
  ``audio_sample_rate`` (see ``wav.py``).
* ``boxes``: the objects in the image, a list of ``{"label": ..., "box": [y0, x0, y1, x1]}`` (exactly
  these two keys; PaliGemma order, rows first; coordinates are edges, so a box may end at the
  border: see ``boxes.py``). ``box_format`` says what the line's coordinates are, never guessed
  from their values: ``"pixels"`` (the default) counts pixels of the image file as stored,
  0 <= y <= height and 0 <= x <= width; ``"normalized"`` is fractions of the height and width in
  [0, 1]. Boxes must have a positive area; a label is a non-empty string without ``;``, ``<`` or
  ``>`` (they delimit objects and boxes in the grounding text), whitespace-normalised. An empty
  list is allowed and adds nothing. The boxes of every line of an image are the record's objects
  (an object listed twice, same label and box, counts once). The stretch to a square image (above)
  scales rows and columns independently, so a box's normalised coordinates are those of the
  prepared image too.
* ``refer``: referring expressions, a list of ``{"expression": ..., "box": [y0, x0, y1, x1]}``
  (exactly these two keys; the box as in ``boxes``, in the line's ``box_format``; the expression
  obeys the label rules). Each distinct (expression, box) of an image is one "refer" question,
  prompt ``detect_prompt([expression])`` ("detect the dog on the left"), answer the box alone
  (``box_markup``; PaliGemma's referring answer: repeating a whole expression after its box, as a
  label's "refer" answer below repeats the label, would make the target many tokens longer for
  nothing the metric reads), stored after the objects' grounding questions. Independent of
  ``boxes``: a referring dataset (RefCOCO) annotates only some objects of an image, so its boxes
  would make an incomplete "detect" answer.
* A record with objects gets grounding questions (question types "detect" and "refer", stored
  after its VQA questions; examples.py turns their boxes into location tokens, so training them
  needs ``config.data.location_bins`` > 0):
  - one "detect": prompt ``detect_prompt(sorted distinct labels)`` ("detect cat ; dog"), answer
    ``detection_text`` of all objects ("<box>..</box> cat ; <box>..</box> dog");
  - one "refer" per label that occurs exactly once in the record: prompt ``detect_prompt([label])``
    ("detect cat"), answer that object's box and label ("<box>..</box> cat", PaliGemma's referring
    output, so "detect cat" has the same form of answer whether the image also holds other labels or
    not). Not when the record has a single label: it would repeat the "detect" question.
* ``video``: a folder of frame images (every non-hidden file is a frame, in natural name order, so
  ``f2.png`` comes before ``f10.png``) or an ``.npy`` array uint8 [T, H, W, 3]. Frames are
  converted like images and resized to ``image_size``. Every clip is fixed to ``video_frames``
  frames (config ``data.video_frames``, which must be > 0 when a manifest has videos): a longer
  clip keeps the evenly spaced frames ``round(linspace(0, T - 1, video_frames))`` (first and last
  included), a shorter one is padded by repeating its last frame.
* The dataset has the audio (video) features when any line has an ``audio`` (``video``) key;
  records without one get an empty clip (0 samples / 0 frames). Likewise the features
  ``reference_answers`` (every question's human answers, concatenated in question order) and
  ``reference_answer_counts`` (int32, how many each question has; 0 for none) exist when any line
  has ``answers``.

Every line is validated (including opening/decoding every image, WAV file and folder frame, and
checking every .npy header) before anything is written; any problem raises
``ValueError("<manifest>:<line>: key '<key>': <problem>")`` (a bad box:
``"<manifest>:<line>: boxes[<i>]: "`` or ``"<manifest>:<line>: refer[<i>]: "`` and ``normalize_box``'s
message).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re

import numpy as np
from PIL import Image

from mmjax.data import wav
from mmjax.data.boxes import normalize_box
from mmjax.location_tokens import Box, box_markup, detect_prompt, detection_text

ALLOWED_KEYS = (
  "image",
  "question",
  "answer",
  "answers",
  "caption",
  "boxes",
  "refer",
  "box_format",
  "split",
  "audio",
  "video",
)
BOX_FORMATS = ("pixels", "normalized")
OBJECT_KEYS = ("label", "box")
REFER_KEYS = ("expression", "box")
MIN_HUMAN_ANSWERS = 2  # the official VQA accuracy leaves one out: one answer alone could never match
# Characters a label cannot hold: ";" separates objects and "<" / ">" spell boxes and location
# tokens in grounding text, so such a label would not parse back (location_tokens.LocationTokens.parse).
LABEL_FORBIDDEN = ";<>"
MEDIA_KEYS = ("audio", "video")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass
class ManifestRecord:
  id: str
  path: str  # absolute image path
  split: str | None = None
  audio: str | None = None  # absolute path of the WAV file
  video: str | None = None  # absolute path of the frame folder or .npy file
  set_on_line: dict = dataclasses.field(default_factory=dict)  # split/audio/video -> line number
  questions: list = dataclasses.field(default_factory=list)
  answers: list = dataclasses.field(default_factory=list)
  captions: list = dataclasses.field(default_factory=list)
  objects: list = dataclasses.field(default_factory=list)  # (label, normalised Box), distinct
  human_answers: list = dataclasses.field(default_factory=list)  # per question: its "answers" (or [])
  refers: list = dataclasses.field(default_factory=list)  # (expression, normalised Box), distinct

  def to_example(self, image_size: int, reference_answers: bool = False) -> dict:
    """The record in the record schema (schema.py); with ``reference_answers`` also the features
    ``reference_answers`` (every question's human answers, concatenated in question order) and
    ``reference_answer_counts`` (how many each question has, 0 for none; grounding questions too)."""
    grounding = grounding_questions(self.objects) + refer_questions(self.refers)
    example = {
      "image": load_image(self.path, image_size),
      "questions": list(self.questions) + [q for q, _, _ in grounding],
      "answers": list(self.answers) + [a for _, a, _ in grounding],
      "question_types": ["vqa"] * len(self.questions) + [t for _, _, t in grounding],
      "captions": list(self.captions),
      "id": self.id,
    }
    if reference_answers:
      per_question = list(self.human_answers) + [[] for _ in grounding]
      example["reference_answers"] = [a for answers in per_question for a in answers]
      example["reference_answer_counts"] = np.asarray([len(a) for a in per_question], np.int32)
    return example


def grounding_questions(objects: list[tuple[str, Box]]) -> list[tuple[str, str, str]]:
  """(question, answer, question type) of a record's objects: one "detect", then one "refer" per
  label that occurs once (by label; none with a single label), as the module docstring says."""
  if not objects:
    return []
  labels = sorted({label for label, _ in objects})
  out = [(detect_prompt(labels), detection_text(objects, labels), "detect")]
  if len(labels) > 1:  # else "detect <label>" is already the detect question
    counts = collections.Counter(label for label, _ in objects)
    out += [
      (detect_prompt([label]), detection_text([(label, box)]), "refer")
      for label, box in sorted(objects)
      if counts[label] == 1
    ]
  return out


def refer_questions(refers: list[tuple[str, Box]]) -> list[tuple[str, str, str]]:
  """(question, answer, "refer") of a record's referring expressions, in their order: "detect
  <expression>" -> the box alone."""
  return [(detect_prompt([expression]), box_markup(box), "refer") for expression, box in refers]


def manifest_hash(manifest_path: str | os.PathLike) -> str:
  """Short hash of the manifest's bytes (keys the prepared dataset's directory)."""
  with open(manifest_path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load_image(path: str, image_size: int | None) -> np.ndarray:
  """Reads any PIL-readable image as uint8 RGB [image_size, image_size, 3] (None: at its own size)."""
  with Image.open(path) as im:
    im.load()
    return _rgb(im, image_size)


def _rgb(im: Image.Image, image_size: int | None) -> np.ndarray:
  """Any PIL image -> uint8 RGB [image_size, image_size, 3] (alpha composited over white; None: its own size)."""
  if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(bg, im)
  im = im.convert("RGB")
  if image_size is not None and im.size != (image_size, image_size):
    im = im.resize((image_size, image_size), Image.Resampling.BILINEAR)
  return np.asarray(im, dtype=np.uint8)


def _check_image(path: str):
  try:
    with Image.open(path) as im:
      im.load()
  except Exception as e:  # PIL raises many kinds
    raise ValueError(f"cannot read image {path}: {e}") from e


def load_audio(path: str, sample_rate: int) -> np.ndarray:
  """An "audio" entry as mono int16 at ``sample_rate``."""
  return wav.read_wav(path, sample_rate)


def _natural_key(name: str):
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _video_frames(path: str):
  """The frames of a "video" entry, undecoded: frame file paths (a folder) or a memory-mapped
  uint8 [T, H, W, 3] array (an .npy file). ValueError saying what is wrong otherwise."""
  if os.path.isdir(path):
    files = sorted(
      (f for f in os.listdir(path) if not f.startswith(".") and os.path.isfile(os.path.join(path, f))), key=_natural_key
    )
    if not files:
      raise ValueError(f"folder has no frame images: {path}")
    return [os.path.join(path, f) for f in files]
  if not path.endswith(".npy"):
    raise ValueError(f"must be a folder of frame images or an .npy file, got {path}")
  try:
    frames = np.load(path, mmap_mode="r", allow_pickle=False)
  except Exception as e:  # numpy raises ValueError/OSError/EOFError on bad files
    raise ValueError(f"cannot read .npy file {path}: {e}") from e
  if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not frames.size:
    raise ValueError(
      f"{path}: expected a uint8 array [T, H, W, 3] with T, H, W >= 1, got {frames.dtype} {list(frames.shape)}"
    )
  return frames


def frame_indices(num_frames: int, video_frames: int) -> np.ndarray:
  """Which of a clip's ``num_frames`` frames make its fixed ``video_frames`` (see module doc)."""
  if num_frames >= video_frames:
    return np.round(np.linspace(0, num_frames - 1, video_frames)).astype(np.int64)
  return np.minimum(np.arange(video_frames), num_frames - 1)


def load_video(path: str, image_size: int, video_frames: int) -> np.ndarray:
  """A "video" entry as uint8 [video_frames, image_size, image_size, 3]."""
  frames = _video_frames(path)
  return np.stack(
    [
      load_image(frames[i], image_size)
      if isinstance(frames, list)
      else _rgb(Image.fromarray(np.asarray(frames[i])), image_size)
      for i in frame_indices(len(frames), video_frames)
    ]
  )


def _check_video(path: str):
  """ValueError unless every frame of the "video" entry at ``path`` can be read."""
  frames = _video_frames(path)
  if isinstance(frames, list):
    for f in frames:
      _check_image(f)


def _check_audio(path: str):
  try:
    n = len(wav.read_wav(path, sample_rate=None))
  except Exception as e:  # wave.Error, EOFError, ValueError, ...
    raise ValueError(f"cannot read audio {path} (a PCM WAV file is expected): {e}") from e
  if n == 0:
    raise ValueError(f"audio file has no samples: {path}")


# What "every path entry can be read" means per key; each raises ValueError saying what is wrong.
_CHECKS = {"image": _check_image, "audio": _check_audio, "video": _check_video}


# The optional keys the prepared dataset's features depend on (a quick scan finds them: used_keys).
FEATURE_KEYS = MEDIA_KEYS + ("answers",)


def used_keys(manifest_path: str | os.PathLike) -> set[str]:
  """Which of FEATURE_KEYS any line of the manifest uses; the dataset's features depend on them.

  A quick scan: lines that are not JSON objects are skipped here (parse_manifest reports them).
  """
  used = set()
  with open(manifest_path, "r", encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        obj = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(obj, dict):
        used |= set(FEATURE_KEYS) & set(obj)
  return used


def used_media(manifest_path: str | os.PathLike) -> set[str]:
  """Which of MEDIA_KEYS any line of the manifest uses (see used_keys)."""
  return used_keys(manifest_path) & set(MEDIA_KEYS)


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


def _image_size(path: str) -> tuple[int, int]:
  """(height, width) of an image file, from its header (the pixels are not decoded)."""
  try:
    with Image.open(path) as im:
      width, height = im.size
  except Exception as e:  # PIL raises many kinds
    raise ValueError(f"cannot read image {path}: {e}") from e
  return height, width


def check_label(label, at: str, what: str = "label") -> str:
  """A box's label or referring expression, whitespace-normalised; ValueError starting with ``at``
  unless it is a non-empty string without LABEL_FORBIDDEN characters."""
  if not isinstance(label, str) or not label.strip():
    raise ValueError(f"{at}: {what} must be a non-empty string, got {label!r}.")
  label = " ".join(label.split())
  if any(c in label for c in LABEL_FORBIDDEN):
    raise ValueError(
      f"{at}: {what} {label!r} must not contain any of {' '.join(LABEL_FORBIDDEN)} (grounding text syntax)."
    )
  return label


def _boxed(obj, key: str, keys: tuple[str, str], manifest_path, lineno: int, image_size) -> list[tuple[str, Box]]:
  """The (text, normalised box) entries of a line's "boxes" (keys label, box) or "refer" (keys
  expression, box); ``image_size`` () -> (height, width) of its image, asked only for pixel boxes.
  ValueError naming the line otherwise."""
  where = f"{manifest_path}:{lineno}"  # as _err writes it
  fmt = obj.get("box_format", "pixels")
  if fmt not in BOX_FORMATS:
    raise ValueError(f"{where}: key 'box_format': {fmt!r} is not one of {', '.join(BOX_FORMATS)}.")
  if key not in obj:
    return []
  entries, text_key = obj[key], keys[0]
  if not isinstance(entries, list):
    raise ValueError(
      f"{where}: key {key!r} must be a list of {{\"{text_key}\": ..., \"box\": [y0, x0, y1, x1]}} objects, "
      f"got a {type(entries).__name__}."
    )
  size = image_size() if fmt == "pixels" and entries else None
  out = []
  for i, o in enumerate(entries):
    at = f"{where}: {key}[{i}]"
    if not isinstance(o, dict) or set(o) != set(keys):
      got = f"keys {sorted(o)}" if isinstance(o, dict) else f"a {type(o).__name__}"
      raise ValueError(f"{at}: must be an object with exactly the keys \"{text_key}\" and \"box\", got {got}.")
    text = check_label(o[text_key], at, text_key)
    out.append((text, normalize_box(o["box"], image_size=size, where=at)))
  return out


def _human_answers(obj, manifest_path, lineno: int) -> list[str]:
  """A line's "answers": at least MIN_HUMAN_ANSWERS strings, kept as given (the official VQA
  evaluation cleans and normalises them itself)."""
  answers = obj["answers"]
  if "question" not in obj:
    raise _err(manifest_path, lineno, "answers", "human answers without a question")
  if not isinstance(answers, list) or len(answers) < MIN_HUMAN_ANSWERS or not all(isinstance(a, str) for a in answers):
    got = f"{len(answers)} answers" if isinstance(answers, list) else f"a {type(answers).__name__}"
    raise _err(
      manifest_path,
      lineno,
      "answers",
      f"must be a list of at least {MIN_HUMAN_ANSWERS} strings (the question's human answers), got {got}",
    )
  return list(answers)


def _set_once(rec: ManifestRecord, key: str, value: str, manifest_path, lineno: int):
  """Sets a per-image attribute (split/audio/video); lines of one image must agree on it."""
  old = getattr(rec, key)
  if old is not None and old != value:
    raise _err(manifest_path, lineno, key, f"image {rec.id} already assigned to {old!r} on line {rec.set_on_line[key]}")
  setattr(rec, key, value)
  rec.set_on_line.setdefault(key, lineno)


def parse_manifest(
  manifest_path: str | os.PathLike, seed: int = 0, check_images: bool = True, video_frames: int = 0
) -> dict[str, list[ManifestRecord]]:
  """Validates the whole manifest and returns {split: [ManifestRecord, ...]} (all three splits;
  validation or test may be empty, train never: no train record is a ValueError).

  check_images: decode every image, audio file and video frame (else only check they exist).
  video_frames: the dataset's frame count; "video" entries are an error when it is 0.
  """
  manifest_path = os.fspath(manifest_path)
  base = os.path.dirname(os.path.abspath(manifest_path))
  try:
    with open(manifest_path, "r", encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{manifest_path}: cannot read manifest: {e}") from e
  records: dict[str, ManifestRecord] = {}
  checked: set[tuple[str, str]] = set()  # (key, path) entries already validated
  sizes: dict[str, tuple[int, int]] = {}  # image path -> (height, width), read for pixel boxes

  def entry_path(obj, key, lineno) -> str:
    """The absolute path of ``obj[key]`` (image/audio/video), validated once per path."""
    abs_path = os.path.normpath(os.path.join(base, _text(obj, key, manifest_path, lineno)))
    if (key, abs_path) not in checked:
      exists = os.path.exists if key == "video" else os.path.isfile  # a video may be a folder
      if not exists(abs_path):
        raise _err(manifest_path, lineno, key, f"file not found: {abs_path}")
      if check_images:
        try:
          _CHECKS[key](abs_path)
        except ValueError as e:
          raise _err(manifest_path, lineno, key, str(e)) from e
      checked.add((key, abs_path))
    return abs_path

  def image_size(path, lineno) -> tuple[int, int]:
    """(height, width) of an image, read once per path (pixel boxes are checked against it)."""
    if path not in sizes:
      try:
        sizes[path] = _image_size(path)
      except ValueError as e:
        raise _err(manifest_path, lineno, "image", str(e)) from e
    return sizes[path]

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
    abs_path = entry_path(obj, "image", lineno)
    rid = os.path.relpath(abs_path, base).replace(os.sep, "/")
    if "video" in obj and video_frames <= 0:
      raise _err(manifest_path, lineno, "video", "videos need data.video_frames > 0 (e.g. config.data.video_frames=8)")
    media = {k: entry_path(obj, k, lineno) for k in MEDIA_KEYS if k in obj}
    has_q, has_a, has_c = "question" in obj, "answer" in obj, "caption" in obj
    if has_q and not has_a:
      raise _err(manifest_path, lineno, "answer", "question without answer")
    if has_a and not has_q:
      raise _err(manifest_path, lineno, "question", "answer without question")
    if "box_format" in obj and "boxes" not in obj and "refer" not in obj:
      raise _err(manifest_path, lineno, "box_format", 'given without "boxes" or "refer" on the line')
    size = lambda: image_size(abs_path, lineno)
    objects = _boxed(obj, "boxes", OBJECT_KEYS, manifest_path, lineno, size)
    refers = _boxed(obj, "refer", REFER_KEYS, manifest_path, lineno, size)
    human = _human_answers(obj, manifest_path, lineno) if "answers" in obj else []
    if not has_q and not has_c and not objects and not refers:
      raise _err(
        manifest_path,
        lineno,
        "question",
        "line has neither a question/answer pair, a caption, boxes nor referring expressions",
      )
    rec = records.get(rid)
    if rec is None:
      rec = records[rid] = ManifestRecord(id=rid, path=abs_path)
    if "split" in obj:
      split = obj["split"]
      if split not in SPLITS:
        raise _err(manifest_path, lineno, "split", f"{split!r} is not one of {', '.join(SPLITS)}")
      _set_once(rec, "split", split, manifest_path, lineno)
    for k, v in media.items():
      _set_once(rec, k, v, manifest_path, lineno)
    if has_q:
      rec.questions.append(_text(obj, "question", manifest_path, lineno))
      rec.answers.append(_text(obj, "answer", manifest_path, lineno))
      rec.human_answers.append(human)
    if has_c:
      rec.captions.append(_text(obj, "caption", manifest_path, lineno))
    for o in objects:  # one object listed twice (same label and box) counts once
      if o not in rec.objects:
        rec.objects.append(o)
    for r in refers:  # likewise one expression of one box
      if r not in rec.refers:
        rec.refers.append(r)
  if not records:
    raise ValueError(f"{manifest_path}: manifest has no records")

  # Seeded 80/10/10 split of the images without an explicit split.
  free = sorted(rid for rid, r in records.items() if r.split is None)
  perm = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]
  n_val = int(round(SPLIT_FRACTIONS[1] * len(perm)))
  n_test = int(round(SPLIT_FRACTIONS[2] * len(perm)))
  n_train = len(perm) - n_val - n_test
  for i, rid in enumerate(perm):
    records[rid].split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
  out = {s: [] for s in SPLITS}
  for rid in sorted(records):
    out[records[rid].split].append(records[rid])
  if not out["train"]:
    counts = ", ".join(f"{s} {len(out[s])}" for s in SPLITS if out[s])
    raise ValueError(
      f"{manifest_path}: no records in the 'train' split (images per split: {counts}); training and the "
      "tokenizer need train records. Give some lines \"split\": \"train\", or leave \"split\" out of some "
      "images (images without one are split 80/10/10 by a seeded hash)."
    )
  return out
