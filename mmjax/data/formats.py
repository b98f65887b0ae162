"""Standard datasets' own annotation files -> a JSONL manifest (manifest.py), so COCO Captions, VQAv2 and
RefCOCO train and are scored with their official metrics like any other manifest.

  lines = formats.coco_captions("annotations/captions_val2017.json", "val2017", split="validation")
  formats.write_manifest(lines, "coco/manifest.jsonl")
  # or, for several files at once (what experiments/convert_dataset.py runs):
  formats.convert("coco_captions", annotations=[...], images=[...], splits=[...], out="coco/manifest.jsonl")

Formats (``FORMATS``); each reader returns manifest lines (dicts, image paths absolute):

* ``coco_captions``: a COCO captions file (captions_train2017.json: ``{"images": [{"id", "file_name",
  ...}], "annotations": [{"image_id", "id", "caption"}]}``) and the folder of its images -> one line
  ``{"image", "caption"}`` per caption. Every caption of an image is kept: the record's captions are
  both its training targets and the references CIDEr-D and BLEU-4 score against.
* ``vqav2``: a VQAv2 questions file (``{"questions": [{"image_id", "question", "question_id"}]}``),
  its annotations file (``{"annotations": [{"question_id", "image_id", "answers": [{"answer", ...}],
  "multiple_choice_answer", ...}]}``) and the image folder -> one line ``{"image", "question",
  "answer", "answers"}`` per question: trained on ``multiple_choice_answer`` (the annotators'
  consensus), scored by the official VQA accuracy against all (10) human answers (evaluate/vqa.py).
  Image files are found by COCO's naming, ``COCO_<subtype>_<image_id:012d>.jpg`` (VQAv2's COCO 2014
  images) or ``<image_id:012d>.jpg`` (COCO 2017), or by the ``"images"`` list of a COCO json of the
  same images (``images_json``, e.g. instances_val2014.json).
* ``refcoco``: RefCOCO / RefCOCO+ / RefCOCOg in the refer toolkit's layout: ``refs(unc).p`` (a
  pickle of ``[{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent", ...}], ...}]``; the
  same list as a JSON file is read too), ``instances.json`` (COCO detection: ``"images"`` with
  height and width, ``"annotations"`` with ``"bbox"`` [x, y, w, h] in pixels) and the image folder
  -> one line per image ``{"image", "refer": [{"expression": sent, "box": [y0, x0, y1, x1]}, ...]}``
  holding every sentence of every ref of the image, each a "refer" question scored by
  ``refer_acc50`` (Acc@0.5, RefCOCO's metric). Boxes are clipped to the image's height and width
  (COCO boxes may overshoot the border by float rounding); a box without area is an error.

Splits. A manifest has the splits train, validation and test (manifest.SPLITS). A COCO captions or
VQAv2 file is one official split: ``split`` names the manifest split of its lines (None: left to
the manifest's seeded 80/10/10). RefCOCO's refs carry their own split, mapped by ``REFCOCO_SPLITS``
(train -> train, val -> validation, test, testA and testB -> test); as testA and testB cannot both
be the test split, ``split_map`` changes the mapping, e.g. ``{"testB": None}`` drops testB so that
test is testA alone (one manifest per test split reports each official number).

The TFDS catalog's ``coco_captions`` and ``ref_coco`` (what ``config.data.tfds_name`` trains on, once TFDS
has prepared them: mmjax never downloads them) are converted from their TFDS examples by
``tfds_manifest(name, data_dir)``, once, into ``data_dir/mmjax_from_tfds/<dataset>/<config>/<version>/``
(manifest.jsonl and the images as TFDS stores them). ``tfds_coco_captions`` and ``tfds_ref_coco`` turn
examples (numpy dicts in TFDS's feature layout) into lines as above: one caption line per caption; one
line per image with every expression of every object, the boxes TFDS's normalised [ymin, xmin, ymax,
xmax] (``"box_format": "normalized"``). Splits (``TFDS_SPLITS``): coco_captions (Karpathy and Li's) train
and restval -> train, val -> validation, test -> test; ref_coco train, validation, and test / testA /
testB all -> test.

Images must exist (checked here, so a wrong image folder fails at once, not at preparation); the
manifest's paths are relative to its folder. Problems are one-line ValueErrors naming the file and
the record: ``"<file>: annotations[12] (id 4567): image_id 99 has no entry in "images""``.
``write_manifest`` writes a temporary file next to the target and renames it, so a failed
conversion writes nothing and leaves an existing manifest as it was.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import numbers
import os
import pickle
import re
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
from PIL import Image

from mmjax.data.boxes import normalize_box
from mmjax.data.manifest import LABEL_FORBIDDEN, MIN_HUMAN_ANSWERS, SPLITS, check_label

FORMATS = ("coco_captions", "vqav2", "refcoco")
REFCOCO_SPLITS = {"train": "train", "val": "validation", "test": "test", "testA": "test", "testB": "test"}
# COCO's image file names: COCO 2014 (VQAv2's images) and COCO 2017.
_COCO_FILE = re.compile(r"^(?:COCO_[A-Za-z0-9]+_)?(\d{12})\.jpg$")


# ----------------------------------------------------------------------------------------------
# Reading records, with errors that name the file and the record


def _kind(v) -> str:
  return type(v).__name__


def _load_json(path) -> Any:
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except OSError as e:
    raise ValueError(f"{path}: cannot read: {e.strerror or e}") from e
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a valid JSON file: {e}") from e


def _records(data, key: str, path, layout: str) -> list:
  """``data[key]``, the list of records of an official file; ValueError showing the layout otherwise."""
  if not isinstance(data, dict) or not isinstance(data.get(key), list):
    got = f"keys {sorted(data)[:8]}" if isinstance(data, dict) else f"a {_kind(data)}"
    raise ValueError(f'{path}: expected a JSON object with a "{key}" list ({layout}), got {got}.')
  return data[key]


def _label(key: str, index: int, record, id_key: str = "id") -> str:
  """The name of a record in errors: <key>[<index>], and (<id_key> <id>) when the record has one."""
  ident = f" ({id_key} {record[id_key]!r})" if isinstance(record, dict) and id_key in record else ""
  return f"{key}[{index}]{ident}"


def _where(path, key: str, index: int, record, id_key: str = "id") -> str:
  """Where a record is, for errors: <file>: <label>."""
  return f"{path}: {_label(key, index, record, id_key)}"


def _field(record, key: str, where: str, kind: str):
  """``record[key]`` checked to be of ``kind``: "id" (an integer), "text" (a non-empty string), "list"
  or "number" (finite)."""
  if not isinstance(record, dict):
    raise ValueError(f"{where}: must be a JSON object, got a {_kind(record)}.")
  if key not in record:
    raise ValueError(f"{where}: missing key {key!r}.")
  v = record[key]
  ok = {
    "id": lambda: isinstance(v, numbers.Integral) and not isinstance(v, bool),
    "text": lambda: isinstance(v, str) and v.strip() != "",
    "list": lambda: isinstance(v, list),
    "number": lambda: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v),
  }[kind]()
  if not ok:
    want = {"id": "an integer id", "text": "a non-empty string", "list": "a list", "number": "a finite number"}[kind]
    raise ValueError(f"{where}: key {key!r} must be {want}, got {v!r}.")
  return int(v) if kind == "id" else v


def _check_folder(images_dir) -> str:
  images_dir = os.path.abspath(os.path.expanduser(os.fspath(images_dir)))
  if not os.path.isdir(images_dir):
    raise ValueError(f"{images_dir}: image folder not found.")
  return images_dir


def _coco_images(path, data, layout: str, size: bool = False) -> dict[int, tuple[str, dict]]:
  """{image id: (where, record)} of a COCO file's "images", ids distinct, file_name (and with
  ``size`` height and width) checked."""
  out: dict[int, tuple[str, dict]] = {}
  for i, im in enumerate(_records(data, "images", path, layout)):
    where = _where(path, "images", i, im)
    iid = _field(im, "id", where, "id")
    _field(im, "file_name", where, "text")
    if size:
      for k in ("height", "width"):
        if _field(im, k, where, "number") <= 0:
          raise ValueError(f"{where}: key {k!r} must be positive, got {im[k]!r}.")
    if iid in out:
      first = next(k for k, x in enumerate(data["images"]) if isinstance(x, dict) and x.get("id") == iid)
      raise ValueError(f"{where}: image id {iid} is listed twice (also images[{first}]).")
    out[iid] = (where, im)
  return out


class _Files:
  """Image files of an image folder, each checked to exist once."""

  def __init__(self, images_dir):
    self.dir = _check_folder(images_dir)
    self._seen: set[str] = set()

  def path(self, file_name: str, where: str) -> str:
    p = os.path.normpath(os.path.join(self.dir, file_name))
    if p not in self._seen:
      if not os.path.isfile(p):
        raise ValueError(f"{where}: image file not found: {p}")
      self._seen.add(p)
    return p


def _split(split) -> dict:
  """The ``split`` entry of a line: {} for None (the manifest's seeded split), else a checked split."""
  if split is None or split == "":
    return {}
  if split not in SPLITS:
    raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)} (or empty: the manifest's 80/10/10 split).")
  return {"split": split}


# ----------------------------------------------------------------------------------------------
# COCO Captions

COCO_CAPTIONS_LAYOUT = (
  'COCO captions: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "id", "caption"}]}'
)


def coco_captions(annotations, images_dir, *, split: str | None = None) -> list[dict]:
  """Manifest lines of a COCO captions file: one {"image", "caption"} per caption (module doc)."""
  extra = _split(split)
  files = _Files(images_dir)
  data = _load_json(annotations)
  images = _coco_images(annotations, data, COCO_CAPTIONS_LAYOUT)
  lines = []
  for i, ann in enumerate(_records(data, "annotations", annotations, COCO_CAPTIONS_LAYOUT)):
    where = _where(annotations, "annotations", i, ann)
    iid = _field(ann, "image_id", where, "id")
    caption = _field(ann, "caption", where, "text")
    if iid not in images:
      raise ValueError(f'{where}: image_id {iid} has no entry in "images".')
    image = files.path(images[iid][1]["file_name"], images[iid][0])
    lines.append({"image": image, "caption": caption} | extra)
  return lines


# ----------------------------------------------------------------------------------------------
# VQAv2

COCO_IMAGES_LAYOUT = 'a COCO json: {"images": [{"id", "file_name"}]}'
VQA_QUESTIONS_LAYOUT = 'VQA questions: {"questions": [{"image_id", "question", "question_id"}]}'
VQA_ANNOTATIONS_LAYOUT = (
  'VQA annotations: {"annotations": [{"question_id", "image_id", "answers": [{"answer"}], "multiple_choice_answer"}]}'
)


def _coco_named_files(images_dir: str) -> dict[int, str]:
  """{image id: file name} of the COCO-named files of a folder (COCO_<subtype>_<id:012d>.jpg or <id:012d>.jpg)."""
  out: dict[int, str] = {}
  for name in sorted(os.listdir(images_dir)):
    m = _COCO_FILE.match(name)
    if m:
      iid = int(m.group(1))
      if iid in out:
        raise ValueError(f"{images_dir}: two files for image id {iid}: {out[iid]} and {name}.")
      out[iid] = name
  return out


def vqav2(questions, annotations, images_dir, *, split: str | None = None, images_json=None) -> list[dict]:
  """Manifest lines of a VQAv2 questions + annotations pair: one {"image", "question", "answer",
  "answers"} per question (module doc). Every question needs its annotation and every annotation
  its question (a test questions file, without answers, cannot be converted)."""
  extra = _split(split)
  files = _Files(images_dir)
  if images_json is not None:
    named = {
      iid: im["file_name"]
      for iid, (_, im) in _coco_images(images_json, _load_json(images_json), COCO_IMAGES_LAYOUT).items()
    }
    source = f'"images" of {images_json}'
  else:
    named = _coco_named_files(files.dir)
    source = f"{files.dir} (COCO_<subtype>_<id:012d>.jpg or <id:012d>.jpg; or give a COCO json's images)"
  by_question: dict[int, tuple[str, dict]] = {}
  for i, ann in enumerate(_records(_load_json(annotations), "annotations", annotations, VQA_ANNOTATIONS_LAYOUT)):
    where = _where(annotations, "annotations", i, ann, "question_id")
    qid = _field(ann, "question_id", where, "id")
    if qid in by_question:
      raise ValueError(f"{where}: question_id {qid} is annotated twice.")
    by_question[qid] = (where, ann)
  lines, used = [], set()
  for i, q in enumerate(_records(_load_json(questions), "questions", questions, VQA_QUESTIONS_LAYOUT)):
    where = _where(questions, "questions", i, q, "question_id")
    qid = _field(q, "question_id", where, "id")
    iid = _field(q, "image_id", where, "id")
    text = _field(q, "question", where, "text")
    if qid in used:
      raise ValueError(f"{where}: question_id {qid} is listed twice.")
    if qid not in by_question:
      raise ValueError(
        f"{where}: no annotation with this question_id in {annotations} (a question without answers can be "
        "neither trained nor scored)."
      )
    used.add(qid)
    ann_where, ann = by_question[qid]
    if _field(ann, "image_id", ann_where, "id") != iid:
      raise ValueError(f"{ann_where}: image_id {ann['image_id']} but its question ({where}) is about image {iid}.")
    answer = _field(ann, "multiple_choice_answer", ann_where, "text")
    humans = _field(ann, "answers", ann_where, "list")
    if len(humans) < MIN_HUMAN_ANSWERS:
      raise ValueError(
        f"{ann_where}: key 'answers' holds {len(humans)} answers; the official accuracy needs at least "
        f"{MIN_HUMAN_ANSWERS}."
      )
    human_answers = []
    for k, h in enumerate(humans):
      if not isinstance(h, dict) or not isinstance(h.get("answer"), str):
        raise ValueError(f'{ann_where}: answers[{k}] must be an object with a string "answer", got {h!r}.')
      human_answers.append(h["answer"])
    if iid not in named:
      raise ValueError(f"{where}: image_id {iid} has no image in {source}.")
    image = files.path(named[iid], where)
    lines.append({"image": image, "question": text, "answer": answer, "answers": human_answers} | extra)
  unasked = [w for qid, (w, _) in by_question.items() if qid not in used]
  if unasked:
    raise ValueError(
      f"{unasked[0]}: no question with this question_id in {questions} ({len(unasked)} such annotations)."
    )
  return lines


# ----------------------------------------------------------------------------------------------
# RefCOCO (refer toolkit layout)

REFS_LAYOUT = 'refs: a list of {"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent"}]}'
INSTANCES_LAYOUT = (
  'COCO instances: {"images": [{"id", "file_name", "height", "width"}], "annotations": [{"id", "bbox"}]}'
)


def _load_refs(path) -> list:
  """The refs list of a refer-toolkit pickle (refs(unc).p) or of a JSON file holding the same list."""
  try:
    with open(path, "rb") as f:
      head = f.read(64).lstrip()
      f.seek(0)
      if head.startswith(b"["):
        refs = json.load(f)
      else:
        # The official refs files are Python 2 pickles: latin1 reads their byte strings as text (the
        # toolkit's sentences are ASCII). Unpickling runs code the file names: open only trusted files
        # (or their JSON form).
        refs = pickle.load(f, encoding="latin1")
  except OSError as e:
    raise ValueError(f"{path}: cannot read: {e.strerror or e}") from e
  except Exception as e:  # pickle and json raise many kinds on a file that is neither
    raise ValueError(f"{path}: not a refs pickle or JSON list ({REFS_LAYOUT}): {e}") from e
  if not isinstance(refs, list):
    raise ValueError(f"{path}: expected {REFS_LAYOUT}, got a {_kind(refs)}.")
  return refs


def _pixel_box(ann, where: str, height: float, width: float) -> list[float]:
  """A COCO annotation's bbox [x, y, w, h] as the manifest's [y0, x0, y1, x1], clipped to the image."""
  bbox = _field(ann, "bbox", where, "list")
  if len(bbox) != 4 or not all(
    isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox
  ):
    raise ValueError(f"{where}: key 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}.")
  x, y, w, h = (float(v) for v in bbox)
  if w <= 0 or h <= 0:
    raise ValueError(f"{where}: bbox {bbox!r} has w <= 0 or h <= 0 (COCO boxes are [x, y, w, h]).")
  y0, x0, y1, x1 = max(0.0, y), max(0.0, x), min(float(height), y + h), min(float(width), x + w)
  if y1 <= y0 or x1 <= x0:
    raise ValueError(f"{where}: bbox {bbox!r} lies outside its {width:g} x {height:g} image.")
  return [y0, x0, y1, x1]


def refcoco(refs, instances, images_dir, *, split_map: dict | None = None) -> list[dict]:
  """Manifest lines of RefCOCO-style refs + instances: one {"image", "refer", "split"} per image
  (module doc). ``split_map`` updates REFCOCO_SPLITS (a value None drops that split's refs)."""
  mapping = {**REFCOCO_SPLITS, **(split_map or {})}
  for ours in mapping.values():
    if ours is not None:
      _split(ours)
  files = _Files(images_dir)
  ref_list = _load_refs(refs)
  data = _load_json(instances)
  images = _coco_images(instances, data, INSTANCES_LAYOUT, size=True)
  anns: dict[int, tuple[str, dict]] = {}
  for i, ann in enumerate(_records(data, "annotations", instances, INSTANCES_LAYOUT)):
    where = _where(instances, "annotations", i, ann)
    anns.setdefault(_field(ann, "id", where, "id"), (where, ann))
  by_image: dict[int, dict] = {}
  split_of: dict[int, tuple[str, str]] = {}  # image id -> (split, the ref that set it)
  for i, ref in enumerate(ref_list):
    where = _where(refs, "refs", i, ref, "ref_id")
    ann_id = _field(ref, "ann_id", where, "id")
    iid = _field(ref, "image_id", where, "id")
    official = _field(ref, "split", where, "text")
    sentences = _field(ref, "sentences", where, "list")
    if official not in mapping:
      raise ValueError(f"{where}: split {official!r} is not one of {', '.join(mapping)} (extend the split map).")
    split = mapping[official]
    if split is None:
      continue
    if ann_id not in anns:
      raise ValueError(f"{where}: ann_id {ann_id} has no annotation in {instances}.")
    ann_where, ann = anns[ann_id]
    if _field(ann, "image_id", ann_where, "id") != iid:
      raise ValueError(f"{where}: image_id {iid} but its annotation ({ann_where}) is on image {ann['image_id']}.")
    if iid not in images:
      raise ValueError(f'{where}: image_id {iid} has no entry in "images" of {instances}.')
    image_where, image = images[iid]
    box = _pixel_box(ann, ann_where, image["height"], image["width"])
    if not sentences:
      raise ValueError(f"{where}: key 'sentences' is empty.")
    expressions = [
      check_label(_field(s, "sent", f"{where}: sentences[{k}]", "text"), f"{where}: sentences[{k}]", "expression")
      for k, s in enumerate(sentences)
    ]
    if iid in split_of and split_of[iid][0] != split:
      raise ValueError(
        f"{where}: image {iid} is in split {split!r} here but in {split_of[iid][0]!r} for {split_of[iid][1]}; a "
        "manifest gives each image one split."
      )
    split_of.setdefault(iid, (split, _label("refs", i, ref, "ref_id")))
    if iid not in by_image:
      by_image[iid] = {"image": files.path(image["file_name"], image_where), "refer": [], "split": split}
    by_image[iid]["refer"] += [{"expression": e, "box": box} for e in expressions]
  return list(by_image.values())


# ----------------------------------------------------------------------------------------------
# Writing


def write_manifest(lines: Sequence[dict], out) -> str:
  """Writes ``lines`` as the JSONL manifest ``out`` (image paths made relative to its folder) and
  returns its absolute path. Atomic: written to a temporary file in the same folder, then renamed."""
  if not lines:
    raise ValueError(f"{out}: no lines to write (no record was converted).")
  out = os.path.abspath(os.path.expanduser(os.fspath(out)))
  base = os.path.dirname(out)
  os.makedirs(base, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=base, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for line in lines:
        line = dict(line)
        line["image"] = os.path.relpath(line["image"], base).replace(os.sep, "/")
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, out)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return out


def _per_file(values: Sequence, n: int, flag: str, default=None) -> list:
  """``values`` stretched to ``n`` files: one value for all, or exactly one per file."""
  values = list(values or [])
  if not values:
    return [default] * n
  if len(values) == 1:
    return values * n
  if len(values) != n:
    raise ValueError(f"{flag}: give one value, or one per annotations file ({n}), got {len(values)}.")
  return values


def convert(
  fmt: str,
  *,
  annotations: Sequence[str],
  images: Sequence[str],
  out: str,
  questions: Sequence[str] = (),
  instances: str | None = None,
  splits: Sequence[str] = (),
  split_map: dict | None = None,
  images_json: Sequence[str] = (),
) -> dict:
  """Converts official files of format ``fmt`` into the manifest ``out`` (atomically; nothing is
  written on an error). ``annotations``: one or more files (coco_captions: captions files;
  vqav2: annotations files, with ``questions`` one per file; refcoco: one refs file, with
  ``instances``); ``images``, ``splits`` and ``images_json``: one value for all files or one per
  file. Returns {"path", "lines", "images": {split or "auto": number of images}}."""
  if fmt not in FORMATS:
    raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}.")
  annotations = list(annotations or [])
  if not annotations:
    raise ValueError("give the annotation file(s) to convert.")
  n = len(annotations)
  images = _per_file(images, n, "images")
  if images[0] is None:
    raise ValueError("give the image folder(s).")
  if fmt != "vqav2" and (questions or images_json):
    raise ValueError(f"questions and images_json are VQAv2 inputs, not {fmt}'s.")
  if fmt != "refcoco" and (instances or split_map):
    raise ValueError(f"instances and split_map are RefCOCO inputs, not {fmt}'s.")
  lines = []
  if fmt == "refcoco":
    if n != 1 or not instances:
      raise ValueError("refcoco converts one refs file (annotations) with its instances file.")
    if splits:
      raise ValueError("refcoco refs carry their own splits: change them with split_map, not splits.")
    lines = refcoco(annotations[0], instances, images[0], split_map=split_map)
  else:
    splits = _per_file(splits, n, "splits")
    if fmt == "coco_captions":
      for ann, img, split in zip(annotations, images, splits):
        lines += coco_captions(ann, img, split=split)
    else:
      if len(questions or []) != n:
        raise ValueError(f"vqav2 needs one questions file per annotations file ({n}), got {len(questions or [])}.")
      for q, ann, img, split, ij in zip(
        questions, annotations, images, splits, _per_file(images_json, n, "images_json")
      ):
        lines += vqav2(q, ann, img, split=split, images_json=ij)
  path = write_manifest(lines, out)
  split_of = {}
  for line in lines:
    split_of.setdefault(line["image"], line.get("split", "auto"))
  return {"path": path, "lines": len(lines), "images": dict(sorted(collections.Counter(split_of.values()).items()))}


# ----------------------------------------------------------------------------------------------
# The TFDS catalog's coco_captions and ref_coco, read from a prepared TFDS data dir

# TFDS split -> manifest split. coco_captions has Karpathy and Li's splits: "restval" (the ~30k COCO
# val images outside their val and test) is trained on, as in the standard Karpathy train set.
# ref_coco's test splits are all one test split, as REFCOCO_SPLITS does for the refer toolkit's
# files (its builder configs have test, or testA and testB).
TFDS_SPLITS = {
  "coco_captions": {"train": "train", "restval": "train", "val": "validation", "test": "test"},
  "ref_coco": {"train": "train", "validation": "validation", "test": "test", "testA": "test", "testB": "test"},
}
TFDS_MANIFESTS = "mmjax_from_tfds"  # the folder of the converted datasets in the TFDS data dir
_PNG = b"\x89PNG\r\n\x1a\n"


def _tfds_text(v) -> str:
  """A TFDS text value (bytes from tfds.as_numpy, or str) as str."""
  return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _listed(v) -> list:
  # Nested sequences come out of tfds.as_numpy as tf.RaggedTensor: to_list() without naming TF.
  return v.to_list() if hasattr(v, "to_list") else list(v)


def _tfds_image(image, images_dir: str, image_id: int) -> str:
  """Writes an example's image to ``images_dir`` (once per id) and returns its path. Encoded bytes
  (TFDS's SkipDecoding) are written as they are, with no loss; a decoded uint8 array as PNG."""
  os.makedirs(images_dir, exist_ok=True)
  encoded = isinstance(image, (bytes, np.bytes_))
  ext = ".png" if not encoded or bytes(image[:8]) == _PNG else ".jpg"
  path = os.path.join(images_dir, f"{image_id}{ext}")
  if not os.path.exists(path):
    if encoded:
      with open(path, "wb") as f:
        f.write(bytes(image))
    else:
      Image.fromarray(np.asarray(image, np.uint8)).save(path)
  return path


def tfds_coco_captions(examples, images_dir, *, split: str) -> list[dict]:
  """Manifest lines of TFDS coco_captions examples (numpy dicts with "image", "image/id" and
  "captions": {"text": [...]}): one {"image", "caption", "split"} per caption, every caption kept
  (module doc). Images are written to ``images_dir``; empty captions are skipped."""
  extra = _split(split)
  lines = []
  for ex in examples:
    captions = [c for c in (_tfds_text(t).strip() for t in ex["captions"]["text"]) if c]
    if captions:
      image = _tfds_image(ex["image"], os.fspath(images_dir), int(ex["image/id"]))
      lines += [{"image": image, "caption": c} | extra for c in captions]
  return lines


def tfds_ref_coco(examples, images_dir, *, split: str) -> list[dict]:
  """Manifest lines of TFDS ref_coco examples (numpy dicts with "image", "image/id" and "objects":
  {"bbox": [n, 4] normalised [ymin, xmin, ymax, xmax], "refexp": {"raw": n lists of expressions}}):
  one {"image", "refer", "box_format": "normalized", "split"} per image with every expression of
  every object. TFDS keeps zero-area boxes and any text, which a manifest rejects: such boxes and
  expressions are skipped, with a warning counting them. Images are written to ``images_dir``."""
  extra = _split(split)
  lines, skipped = [], collections.Counter()
  for ex in examples:
    objects = ex["objects"]
    refer = []
    for box, raws in zip(
      np.asarray(objects["bbox"], np.float64).reshape(-1, 4), _listed(objects["refexp"]["raw"]), strict=True
    ):
      # 6 decimals keep a float32 coordinate to far below a pixel, and the manifest readable.
      box = [round(float(v), 6) for v in box]
      try:
        normalize_box(box)
      except ValueError:
        skipped["box"] += 1
        continue
      for raw in raws:
        try:
          refer.append({"expression": check_label(_tfds_text(raw), "", "expression"), "box": box})
        except ValueError:
          skipped["expression"] += 1
    if refer:
      image = _tfds_image(ex["image"], os.fspath(images_dir), int(ex["image/id"]))
      lines.append({"image": image, "refer": refer, "box_format": "normalized"} | extra)
  if skipped:
    logging.warning(
      "ref_coco %s: skipped %d objects with a zero-area box and %d expressions that are empty or hold one of %s.",
      split,
      skipped["box"],
      skipped["expression"],
      " ".join(LABEL_FORBIDDEN),
    )
  return lines


TFDS_CONVERTERS = {"coco_captions": tfds_coco_captions, "ref_coco": tfds_ref_coco}


def tfds_manifest(name: str, data_dir) -> str:
  """The manifest of the TFDS catalog dataset ``name`` ("coco_captions", "ref_coco", or with a
  builder config or version, "ref_coco/refcocog_umd") prepared in ``data_dir``, converted on the
  first call: every split (``TFDS_SPLITS``) read once, images written as stored, into
  ``data_dir/mmjax_from_tfds/<dataset>/<config>/<version>/`` (manifest.jsonl, images/<TFDS split>/).
  Written to a temporary folder renamed at the end, so a failed conversion leaves nothing. Nothing
  is downloaded: a dataset TFDS has not prepared is a ValueError saying how to prepare it."""
  import tensorflow_datasets as tfds  # only this reader needs TFDS

  base = name.split("/")[0].split(":")[0]
  if base not in TFDS_SPLITS:
    raise ValueError(f"TFDS dataset {name!r} has no converter; the ones mmjax reads: {', '.join(TFDS_SPLITS)}.")
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # TFDS raises several kinds, with messages of many lines
    raise ValueError(f"TFDS cannot open {name!r}: {str(e).strip().splitlines()[0]}") from e
  out = os.path.join(data_dir, TFDS_MANIFESTS, *builder.info.full_name.split("/"))
  manifest_path = os.path.join(out, "manifest.jsonl")
  if os.path.isfile(manifest_path):
    return manifest_path
  if not builder.is_prepared():
    manual = ""
    if base == "ref_coco":
      manual = " --manual_dir=DIR (ref_coco is a manual download: see its page in the TFDS catalog)"
    raise ValueError(
      f"TFDS has not prepared {builder.info.full_name} in {data_dir}, and mmjax never downloads it: prepare it "
      f"once with `tfds build {name} --data_dir={data_dir}{manual}`, or set the data dir where it is prepared."
    )
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".{os.path.basename(out)}.", suffix=".tmp")
  try:
    decoders = {"image": tfds.decode.SkipDecoding()}  # the stored JPEG bytes, copied not re-encoded
    if base == "ref_coco":
      decoders["objects"] = {"mask": tfds.decode.SkipDecoding()}  # masks are not used: not decoded
    lines = []
    for tfds_split in builder.info.splits:
      split = TFDS_SPLITS[base].get(tfds_split)
      if split is None:
        logging.warning("%s: TFDS split %r has no manifest split (TFDS_SPLITS): left out.", name, tfds_split)
        continue
      logging.info("converting %s split %s -> %s", builder.info.full_name, tfds_split, split)
      examples = tfds.as_numpy(builder.as_dataset(split=tfds_split, decoders=decoders, shuffle_files=False))
      lines += TFDS_CONVERTERS[base](examples, os.path.join(tmp, "images", tfds_split), split=split)
    write_manifest(lines, os.path.join(tmp, "manifest.jsonl"))
    try:
      os.rename(tmp, out)
    except OSError:
      if not os.path.isfile(manifest_path):  # else another process converted it meanwhile: use theirs
        raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return manifest_path
