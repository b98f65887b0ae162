"""Default ``config.data`` block for the mmjax input pipeline (``pipeline.Data``; ``prepare.py``, ``batching.py``).

Keys (defaults):
  source              "manifest"  the dataset (mmjax.registry floor "datasets", or "module:SOURCE" for
                             a project's, e.g. the embedded data's); a non-empty manifest
                             is always the data.
  manifest            ""     JSONL manifest path (the data when set).
  tfds_name           ""     a TFDS catalog dataset mmjax converts (the data when set; not with manifest):
                             "coco_captions" or "ref_coco", optionally with a builder config,
                             "ref_coco/refcocog_umd". TFDS must have prepared it in data_dir (mmjax
                             never downloads it); the first run converts it once into a manifest and
                             image files under data_dir/mmjax_from_tfds/, an ordinary manifest
                             dataset from then on. Splits: coco_captions (Karpathy's) train + restval
                             -> train, val -> validation, test; ref_coco train, validation, and
                             test / testA / testB -> test. ref_coco's "refer" questions need
                             location_bins > 0 (mmjax.data.formats).
  data_dir            $MMJAX_DATA_DIR or "~/.cache/mmjax/tensorflow_datasets" (TFDS data dir).
  image_size          64     square image side (images are resized to it).
  seed                0      seeds the manifest's 80/10/10 split (and a procedural dataset's scenes).
  captions            True   also make one captioning example per caption.
  task_weights        {vqa: 1, caption: 1, av_match: 1, refer: 1, detect: 1, grounded_caption: 1,
                             grounded_vqa: 1}  each task's share of the train batches
                             (examples x weight; 0 drops it); with captions_with_questions the
                             caption weight scales the caption tokens' loss weight instead.
  questions_per_image 1      G > 1: VQA train batches hold batch_size / G images, G questions each;
                             the model encodes each image once for them (needs a fusion whose
                             memory is the image alone: cross_attention, text_as="prefix").
  captions_with_questions False  with G > 1: each VQA batch also carries its images' captions,
                             decoded off the same image encoding (no caption batches for them).
  examples_per_image  {every task: 0}  counts > 0: every train batch is images, each with that many
                             of its examples of every counted task (one text stream per task,
                             shared_images.py), all decoded off one encoding of the image;
                             batch_size counts the examples (images x the counts' sum). Every task
                             the train split has needs a count (or task_weights 0); the weights
                             scale each stream's token weights. Not with questions_per_image > 1.
  max_prompt_len      16     prompt tokens (longer prompts are cut, with a warning).
  max_target_len      64     target tokens incl. bos/eos (longer targets are cut, with a warning).
  vocab_size          512    SentencePiece vocabulary size (a maximum, incl. 256 byte pieces).
  tokenizer           ""     a pretrained checkpoint directory (or tokenizer file) whose tokenizer
                             to use instead of training one (mmjax.pretrained.tokenizers); set by
                             config.model.init_from_pretrained.decoder when empty.
  location_bins       0      N > 0: N location tokens <loc0000>.. after the SentencePiece pieces
                             (mmjax.location_tokens; boxes quantised to N bins per axis). The
                             tokenizer file is the same for any N: a run's config carries it.
                             Needed by the grounding tasks (examples.GROUNDING_TASKS), whose data
                             text holds boxes in <box>y0 x0 y1 x1</box> markup.
Audio and video (all off by default; each setting is prepared into its own dataset directory):
  spoken_questions    False  also store every question as speech (espeak-ng, see speech.py;
                             needs `apt-get install espeak-ng`).
  video_frames        0      frames every clip is fixed to (manifests' "video" entries; a
                             procedural dataset's clips). 0 = no video.
  audio_sample_rate   16000  Hz of every stored clip (manifest "audio" files are resampled to it).
  max_audio_seconds   4.0    batches' "audio" length (longer clips are cut; the longest spoken
                             question of the embedded data is about 3.3 s). Read by the pipeline only.
Tasks on the audio (pipeline options: the prepared dataset is the same with or without them):
  spoken_prompt       False  VQA from spoken questions: every VQA example's text prompt becomes
                             ``examples.SPOKEN_PROMPT`` ("answer the spoken question."), so the
                             question is only in its audio. Needs spoken_questions.
  av_matching         False  audio-visual matching: one more example per record with a sound,
                             prompt "does the sound match the image?", answer yes/no; the sound is
                             another scene's for av_mismatch_fraction of them (av_matching.py).
                             Needs records with their own sound (manifest "audio" files, or a
                             procedural dataset's own sound option).
  av_mismatch_fraction 0.5   fraction of matching examples whose sound is another scene's ("no").
Top-level keys the pipeline also reads: ``config.seed`` (train shuffle seed) and
``config.batch_size`` (global batch size).
"""

from __future__ import annotations

import numbers
import os

import ml_collections

from mmjax.data.tasks import TASK_NAMES

DEFAULT_DATA_DIR = "~/.cache/mmjax/tensorflow_datasets"


def default_data_dir() -> str:
  return os.environ.get("MMJAX_DATA_DIR", DEFAULT_DATA_DIR)


def default_data_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.source = "manifest"
  c.manifest = ""
  c.tfds_name = ""
  c.data_dir = default_data_dir()
  c.image_size = 64
  c.seed = 0
  c.captions = True
  # Train-batch mixing: each task's share is (its examples) x (its weight). Captions name every
  # object's shape and position, a denser perception signal than one answer per question.
  c.task_weights = ml_collections.ConfigDict({t: 1.0 for t in TASK_NAMES})
  # VQA train batches of batch_size questions about batch_size / questions_per_image images: the
  # model encodes each image once for all its questions (needs a fusion whose memory is the image
  # alone, e.g. cross_attention with text_as="prefix"). 1 = one question per image.
  c.questions_per_image = 1
  # With questions_per_image > 1: each VQA batch also carries its images' captions, decoded off the
  # same image encoding; the caption tokens' loss weight is task_weights.caption (no caption batches).
  c.captions_with_questions = False
  # Several tasks per image: each train batch is images with examples_per_image[task] examples of
  # each task (0 everywhere: off), the image encoded once for all of them (shared_images.py).
  c.examples_per_image = ml_collections.ConfigDict({t: 0 for t in TASK_NAMES})
  c.max_prompt_len = 16
  c.max_target_len = 64
  c.vocab_size = 512
  c.tokenizer = ""
  c.location_bins = 0
  c.spoken_questions = False
  c.video_frames = 0
  c.audio_sample_rate = 16000
  c.max_audio_seconds = 4.0
  c.spoken_prompt = False
  c.av_matching = False
  c.av_mismatch_fraction = 0.5
  return c


def max_audio_samples(data_config) -> int:
  """Length N of the batches' ``audio`` [B, N]: max_audio_seconds at audio_sample_rate."""
  return int(round(float(data_config.max_audio_seconds) * int(data_config.audio_sample_rate)))


def questions_per_image(config) -> int:
  """config.data.questions_per_image (default 1), checked against config.batch_size."""
  q = config.data.questions_per_image
  if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 1:
    raise ValueError(f"config.data.questions_per_image={q!r} must be an integer >= 1.")
  batch = int(config.batch_size)
  if batch % q:
    raise ValueError(
      f"config.batch_size={batch} is not a multiple of config.data.questions_per_image={q}: a VQA "
      "train batch holds batch_size questions, questions_per_image of them about each image."
    )
  return int(q)


def stream_fields(stream: str) -> dict[str, str]:
  """The batch key of each field of a text stream that rides beside a batch's own rows -> the example
  field it holds: "<stream>_prompt", "<stream>_prompt_len", "<stream>_in", "<stream>_out",
  "<stream>_mask" (the keys mmjax.models.vlm.stream_keys reads)."""
  fields = ("prompt", "prompt_len", "target_in", "target_out", "target_mask")
  return {f"{stream}_{f.removeprefix('target_')}": f for f in fields}


# With captions_with_questions: the batch key of each caption field -> the example field it holds.
CAPTION_FIELDS = stream_fields("caption")


def examples_per_image(config) -> dict[str, int]:
  """config.data.examples_per_image's tasks with a count > 0 and a task weight > 0, in TASK_NAMES
  order ({}: off), checked: counts are integers >= 0, not combined with questions_per_image > 1 or
  captions_with_questions, and config.batch_size a multiple of the counts' sum."""
  given = config.data.get("examples_per_image") or {}
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  unknown = sorted(set(given) - set(TASK_NAMES))
  if unknown:
    raise ValueError(f"config.data.examples_per_image has unknown tasks {unknown}; expected some of {TASK_NAMES}.")
  for task, n in given.items():
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
      raise ValueError(f"config.data.examples_per_image.{task}={n!r} must be an integer >= 0.")
  weights = config.data.task_weights
  counts = {t: int(given[t]) for t in TASK_NAMES if given.get(t, 0) > 0 and float(weights.get(t, 1.0)) > 0}
  if not counts:
    return {}
  if int(config.data.questions_per_image) != 1 or bool(config.data.captions_with_questions):
    raise ValueError(
      "config.data.examples_per_image already puts several examples of an image in one batch: set "
      "config.data.questions_per_image=1 and config.data.captions_with_questions=False (examples_per_image.vqa=G "
      "and .caption=1 share the images as those do)."
    )
  per_image, batch = sum(counts.values()), int(config.batch_size)
  if batch % per_image:
    raise ValueError(
      f"config.batch_size={batch} is not a multiple of the {per_image} examples per image of "
      f"config.data.examples_per_image {counts}: a train batch is images x that many examples."
    )
  return counts


def images_per_batch(config) -> int:
  """Images in a global train batch with grouped examples: batch_size / questions_per_image, or
  batch_size / the sum of examples_per_image when that is on."""
  counts = examples_per_image(config)
  return int(config.batch_size) // (sum(counts.values()) if counts else questions_per_image(config))


def captions_with_questions(config) -> bool:
  """config.data.captions_with_questions (default False); it needs questions_per_image > 1."""
  on = bool(config.data.captions_with_questions)
  if on and float(config.data.task_weights.caption) == 0:
    return False  # captions weighted 0: plain VQA batches
  if on and questions_per_image(config) == 1:
    raise ValueError(
      "config.data.captions_with_questions=True puts each image's caption next to its questions: "
      "set config.data.questions_per_image > 1 as well."
    )
  return on
