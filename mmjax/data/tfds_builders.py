"""TFDS builders over the one record schema (array_record, random access), and the JSONL manifest's.

Every builder writes the record schema of ``schema.py`` with ``file_format="array_record"`` so the
prepared splits are read through ``builder.as_data_source(split)`` / ``tfds.data_source``.
``RecordConfig`` / ``RecordBuilder`` are what a dataset's builder extends (a project's procedural
data does the same).

* ``mmjax_manifest``: config built by ``manifest_config(path, image_size)``; the config name holds a
  hash of the manifest's content, so a changed manifest is prepared again into a new directory.
  Only the splits that have records are built (a manifest may have no validation or test lines).
  Records hold VQA questions ("vqa") and, from the manifest's boxes and referring expressions,
  grounding questions ("detect", "refer"; manifest.py). A manifest without boxes is prepared exactly
  as before boxes existed (same name, same records), and one with boxes could not be prepared
  before, so the name needs nothing new. The same holds for human answers: a manifest with
  "answers" lines gets the features ``reference_answers`` / ``reference_answer_counts``
  (``REFERENCE_ANSWER_FEATURES``), any other has exactly the features it had.
  ``MANIFEST`` is its dataset source (config.data.source "manifest", or any non-empty
  config.data.manifest).

Optional media (``schema.record_features``): spoken questions (speech.py), a record's own sound
(a manifest's "audio" files) and video clips (a manifest's "video" entries). Enabled media add a
suffix to the config name (``media_suffix``); with none, names and records are exactly those of
datasets prepared before media existed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mmjax.data import manifest as manifest_lib, schema, speech
from mmjax.data.source import DatasetSource

FILE_FORMAT = "array_record"


@dataclasses.dataclass(eq=False)
class RecordConfig(tfds.core.BuilderConfig):
  """What every builder's config shares: image size, seed and the optional media."""

  image_size: int = 64
  seed: int = 0
  spoken_questions: bool = False
  video_frames: int = 0  # 0 = no video feature
  audio_sample_rate: int = 16000

  @property
  def scene_audio(self) -> bool:
    """Whether records carry their own sound (the ``scene_audio`` feature)."""
    raise NotImplementedError

  @property
  def question_types(self) -> tuple[str, ...]:
    """The question types the records' ``question_types`` use (the dataset's own metadata, in the
    order evaluations report them)."""
    return ("vqa",)


def media_suffix(spoken_questions: bool, scene_audio: bool, video_frames: int, audio_sample_rate: int) -> str:
  """Config-name suffix of the enabled media: "" when none (names stay as before media)."""
  parts = (["sq"] if spoken_questions else []) + (["snd"] if scene_audio else [])
  if parts:  # the rate only matters when there is audio
    parts.append(f"sr{int(audio_sample_rate)}")
  if video_frames:
    parts.append(f"v{int(video_frames)}")
  return "".join("_" + p for p in parts)


class RecordBuilder(tfds.core.GeneratorBasedBuilder):
  """What every builder shares: the one record schema (schema.py) at the config's image size,
  with the media features the config enables."""

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return self.dataset_info_from_configs(
      features=schema.record_features(
        cfg.image_size, question_audio=cfg.spoken_questions, scene_audio=cfg.scene_audio, video=cfg.video_frames > 0
      ),
      supervised_keys=None,
      description=__doc__,
    )

  def _check_media_tools(self):
    """Fails before any record is generated when an enabled medium's tool is missing."""
    if self.builder_config.spoken_questions:
      speech.require()

  def _with_media(self, example: dict, scene_audio=None, video=None) -> dict:
    """``example`` plus the media features of this config (absent clips stored empty)."""
    cfg = self.builder_config
    if cfg.spoken_questions:
      example.update(schema.pack_clips(speech.synthesize(q, cfg.audio_sample_rate) for q in example["questions"]))
    if cfg.scene_audio:
      example["scene_audio"] = schema.no_audio() if scene_audio is None else scene_audio
    if cfg.video_frames:
      example["video"] = schema.no_video(cfg.image_size) if video is None else video
    return example


# ----------------------------------------------------------------------------------------------
# Manifests


# Human reference answers (a manifest's "answers", e.g. VQAv2's ten per question), in the layout of
# the question audio (schema.pack_clips): TFDS cannot store a sequence of variable-length text
# sequences, so every question's answers are concatenated and ``reference_answer_counts`` says how
# many each question has (0: none, scored by exact match against its answer).
REFERENCE_ANSWER_FEATURES = ("reference_answers", "reference_answer_counts")


def reference_answer_features() -> dict:
  return {
    "reference_answers": tfds.features.Sequence(tfds.features.Text()),
    "reference_answer_counts": tfds.features.Tensor(shape=(None,), dtype=np.int32),
  }


def unpack_reference_answers(record) -> list[list[str]]:
  """A record's human answers, one list per question ([] for a question without), from the
  ``reference_answers`` / ``reference_answer_counts`` features (text as stored: bytes or str)."""
  counts = np.asarray(record["reference_answer_counts"], np.int64)
  flat = [a.decode("utf-8") if isinstance(a, (bytes, np.bytes_)) else str(a) for a in record["reference_answers"]]
  ends = np.cumsum(counts)
  return [flat[e - c : e] for c, e in zip(counts, ends)]


@dataclasses.dataclass(eq=False)
class ManifestConfig(RecordConfig):
  manifest_path: str = ""
  has_audio: bool = False  # some line has an "audio" file
  has_reference_answers: bool = False  # some line has human "answers"

  @property
  def scene_audio(self) -> bool:
    return self.has_audio

  @property
  def question_types(self) -> tuple[str, ...]:
    # Always all three, whether or not this manifest has boxes: knowing the types must not need a
    # parse of the manifest, and types without examples cost nothing (qtype is computed at load time).
    return ("vqa", "refer", "detect")


def manifest_config(
  manifest_path: str | os.PathLike,
  image_size: int = 64,
  seed: int = 0,
  *,
  spoken_questions: bool = False,
  video_frames: int = 0,
  audio_sample_rate: int = 16000,
) -> ManifestConfig:
  """Config named by the manifest content hash (plus image size, split seed and media).

  Audio and video features exist when the manifest uses the "audio" / "video" keys (a quick
  scan); ``video_frames`` only matters then.
  """
  path = os.path.abspath(os.fspath(manifest_path))
  if not os.path.isfile(path):
    raise ValueError(f"{path}: manifest not found")
  h = manifest_lib.manifest_hash(path)
  # The manifest's folder matters too: image paths are relative to it.
  h2 = hashlib.sha256(os.path.dirname(path).encode()).hexdigest()[:6]
  used = manifest_lib.used_keys(path)
  has_audio = "audio" in used
  video_frames = int(video_frames) if "video" in used else 0
  name = f"m{h}-{h2}_s{int(image_size)}_seed{int(seed)}" + media_suffix(
    spoken_questions, has_audio, video_frames, audio_sample_rate
  )
  return ManifestConfig(
    name=name,
    version="1.0.0",
    description=f"manifest {path}",
    manifest_path=path,
    image_size=int(image_size),
    seed=int(seed),
    spoken_questions=bool(spoken_questions),
    has_audio=has_audio,
    has_reference_answers="answers" in used,
    video_frames=video_frames,
    audio_sample_rate=int(audio_sample_rate),
  )


class MmjaxManifest(RecordBuilder):
  """Records of a JSONL manifest (VQA, captions and boxes' grounding questions), grouped per image."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []
  # TFDS derives code_path via importlib_resources (not always installed); our builders have no
  # checksums or other resources next to the code, so give the plain file path.
  code_path = epath.Path(__file__)

  def __init__(self, *args, parsed=None, **kwargs):
    self._parsed = parsed
    super().__init__(*args, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    info = super()._info()
    if not self.builder_config.has_reference_answers:
      return info
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict({**info.features, **reference_answer_features()}),
      supervised_keys=None,
      description=__doc__,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    self._check_media_tools()
    parsed = self._parsed
    if parsed is None:
      parsed = manifest_lib.parse_manifest(cfg.manifest_path, seed=cfg.seed, video_frames=cfg.video_frames)
    # TFDS refuses a split that yields no examples ("No examples were yielded"), so a split without
    # records is left out of the dataset: builder.info.splits then lacks it, and asking for it is
    # an error naming it and the manifest (prepare.check_split). parse_manifest guarantees train.
    return {split: self._generate_examples(recs) for split, recs in parsed.items() if recs}

  def _generate_examples(self, records):
    cfg = self.builder_config
    for rec in records:
      yield (
        rec.id,
        self._with_media(
          rec.to_example(cfg.image_size, reference_answers=cfg.has_reference_answers),
          scene_audio=(manifest_lib.load_audio(rec.audio, cfg.audio_sample_rate) if rec.audio else None),
          video=(manifest_lib.load_video(rec.video, cfg.image_size, cfg.video_frames) if rec.video else None),
        ),
      )


# ----------------------------------------------------------------------------------------------
# Preparation helpers


def is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
  return os.path.exists(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def prepare(builder: tfds.core.DatasetBuilder, data_dir: str):
  """download_and_prepare; on failure removes whatever this call created for this dataset.

  Only ``data_dir/<dataset name>`` is cleaned (plus ``data_dir`` itself when this call created it
  and it is left empty): ``data_dir`` may be shared with other datasets and other processes.
  """
  root = os.path.join(data_dir, builder.name)
  before = set()
  for r, dirs, files in os.walk(root):
    before.update(os.path.join(r, x) for x in dirs + files)
  root_existed, data_dir_existed = os.path.isdir(root), os.path.isdir(data_dir)
  try:
    # Nothing is downloaded; keep TFDS's (empty) downloads/ folder out of data_dir.
    with tempfile.TemporaryDirectory(prefix="mmjax_tfds_dl_") as dl:
      builder.download_and_prepare(
        download_dir=dl, file_format=FILE_FORMAT, download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
  except BaseException:
    created = []
    for r, dirs, files in os.walk(root):
      created.extend(os.path.join(r, x) for x in dirs + files if os.path.join(r, x) not in before)
    for p in sorted(created, key=len):
      if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
      elif os.path.lexists(p):
        try:
          os.remove(p)
        except OSError:
          pass
    if not root_existed:
      shutil.rmtree(root, ignore_errors=True)
    if not data_dir_existed:
      try:
        os.rmdir(data_dir)  # only if empty: never delete what others wrote meanwhile
      except OSError:
        pass
    raise


def prepare_manifest(
  manifest_path: str,
  data_dir: str,
  image_size: int = 64,
  seed: int = 0,
  *,
  spoken_questions: bool = False,
  video_frames: int = 0,
  audio_sample_rate: int = 16000,
) -> MmjaxManifest:
  """Validates + builds (if missing) the manifest dataset and returns its builder.

  Validation runs before anything is written; on any error nothing is left under ``data_dir``.
  """
  data_dir = os.path.expanduser(os.fspath(data_dir))
  config = manifest_config(
    manifest_path,
    image_size,
    seed,
    spoken_questions=spoken_questions,
    video_frames=video_frames,
    audio_sample_rate=audio_sample_rate,
  )
  builder = MmjaxManifest(config=config, data_dir=data_dir)
  if not is_prepared(builder):
    parsed = manifest_lib.parse_manifest(config.manifest_path, seed=seed, video_frames=config.video_frames)
    builder = MmjaxManifest(config=config, data_dir=data_dir, parsed=parsed)
    prepare(builder, data_dir)
    builder = MmjaxManifest(config=config, data_dir=data_dir)
  else:
    logging.info("manifest dataset already prepared in %s", builder.data_dir)
  return builder


def split_sizes(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  return {name: int(s.num_examples) for name, s in builder.info.splits.items()}


def _manifest_builder_config(data) -> ManifestConfig:
  if not os.path.isfile(os.path.expanduser(data.manifest)):
    raise ValueError(f"config.data.manifest={data.manifest!r}: no such file.")
  return manifest_config(
    os.path.expanduser(data.manifest),
    image_size=data.image_size,
    seed=data.seed,
    spoken_questions=data.spoken_questions,
    video_frames=data.video_frames,
    audio_sample_rate=data.audio_sample_rate,
  )


def _prepare_manifest(cfg: ManifestConfig, data_dir: str) -> MmjaxManifest:
  return prepare_manifest(
    cfg.manifest_path,
    data_dir,
    cfg.image_size,
    cfg.seed,
    spoken_questions=cfg.spoken_questions,
    video_frames=cfg.video_frames,
    audio_sample_rate=cfg.audio_sample_rate,
  )


MANIFEST = DatasetSource(builder_config=_manifest_builder_config, prepare=_prepare_manifest)
