r"""Converts a standard dataset's own annotation files into a JSONL manifest (mmjax.data.formats).

  # COCO Captions, train and val in one manifest (one --images and --split per annotations file):
  python experiments/convert_dataset.py --format=coco_captions \
      --annotations=coco/annotations/captions_train2017.json,coco/annotations/captions_val2017.json \
      --images=coco/train2017,coco/val2017 --split=train,validation --out=coco/captions.jsonl
  # VQAv2 (questions + annotations per split; scored by the official VQA accuracy):
  python experiments/convert_dataset.py --format=vqav2 \
      --questions=v2_OpenEnded_mscoco_train2014_questions.json,v2_OpenEnded_mscoco_val2014_questions.json \
      --annotations=v2_mscoco_train2014_annotations.json,v2_mscoco_val2014_annotations.json \
      --images=coco/train2014,coco/val2014 --split=train,validation --out=vqav2.jsonl
  # RefCOCO (the refs' own splits; testA as the test split, testB dropped):
  python experiments/convert_dataset.py --format=refcoco --annotations='refcoco/refs(unc).p' \
      --instances=refcoco/instances.json --images=coco/train2014 --split_map=testB: --out=refcoco.jsonl

Then train on it: python experiments/train.py --workdir=DIR --config.data.manifest=coco/captions.jsonl

An empty --split (or none) leaves a file's images to the manifest's seeded 80/10/10 split. The
manifest is written atomically: on an error (one line naming the file and the record) nothing is
written. Prints the manifest's path and its images per split.
"""

from absl import app, flags

from mmjax import cli

_FORMAT = flags.DEFINE_enum("format", None, ["coco_captions", "vqav2", "refcoco"], "Layout of the input files.")
_ANNOTATIONS = flags.DEFINE_list(
  "annotations", None, "coco_captions: captions json(s); vqav2: annotations json(s); refcoco: refs(unc).p or refs json."
)
_QUESTIONS = flags.DEFINE_list("questions", [], "vqav2: the questions json of each annotations file.")
_INSTANCES = flags.DEFINE_string("instances", None, "refcoco: instances.json (images and boxes).")
_IMAGES = flags.DEFINE_list("images", None, "Image folder: one for all annotation files, or one per file.")
_IMAGES_JSON = flags.DEFINE_list(
  "images_json", [], "vqav2: a COCO json whose \"images\" name the files (default: COCO file names)."
)
_SPLIT = flags.DEFINE_list(
  "split", [], "coco_captions / vqav2: train, validation or test, one for all files or one per file."
)
_SPLIT_MAP = flags.DEFINE_list(
  "split_map", [], "refcoco: official:ours pairs changing the split mapping; empty ours drops it (testB:)."
)
_OUT = flags.DEFINE_string("out", None, "The manifest to write (.jsonl).")
flags.mark_flags_as_required(["format", "annotations", "images", "out"])


def _split_map(pairs: list[str]) -> dict:
  out = {}
  for pair in pairs:
    official, sep, ours = pair.partition(":")
    if not sep or not official:
      raise ValueError(f"--split_map: {pair!r} is not official:ours (e.g. testA:test, or testB: to drop testB).")
    out[official] = ours or None
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mmjax.data import formats

  summary = formats.convert(
    _FORMAT.value,
    annotations=_ANNOTATIONS.value,
    images=_IMAGES.value,
    out=_OUT.value,
    questions=_QUESTIONS.value,
    instances=_INSTANCES.value,
    splits=_SPLIT.value,
    split_map=_split_map(_SPLIT_MAP.value),
    images_json=_IMAGES_JSON.value,
  )
  per_split = ", ".join(
    f"{split if split != 'auto' else 'no split (seeded 80/10/10)'} {n}" for split, n in summary["images"].items()
  )
  print(f"wrote {summary['path']}: {summary['lines']} lines, images per split: {per_split}")


if __name__ == "__main__":
  cli.run(main)
