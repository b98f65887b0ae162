"""Preparing a config's data: the dataset it names, built into TFDS if missing, the tokenizer trained
on its train split, and its splits' examples (``load_split``).

Config keys (``config.data.*``; defaults in ``mmjax.data.config.default_data_config``):
  source ("manifest"), manifest (""; when set, the data), tfds_name (""; when set, the data: a TFDS
  catalog dataset converted to a manifest, formats.tfds_manifest), data_dir, image_size (64), seed (0),
  captions (True), max_prompt_len (16), max_target_len (64), vocab_size (512), spoken_questions
  (False), video_frames (0), audio_sample_rate (16000), max_audio_seconds (4.0), spoken_prompt
  (False), av_matching (False), av_mismatch_fraction (0.5), plus what the source reads (its own
  block, e.g. ``config.data.shapes``). A bare data config works too wherever only these are read.
"""

from __future__ import annotations

import logging
import os

import tensorflow_datasets as tfds

from mmjax import registry
from mmjax.data import av_matching as av_lib, config as config_lib, formats, tfds_builders
from mmjax.data.examples import CAPTION_PROMPT, SPLITS, SPOKEN_PROMPT, SplitData, read_texts
from mmjax.data.source import DatasetSource
from mmjax.location_tokens import strip_boxes
from mmjax.pretrained import tokenizers as pretrained_tokenizers
from mmjax.tokenizer import Tokenizer

TOKENIZER_FILENAME = "tokenizer.model"


def data_config(config):
  """``config.data``, or ``config`` itself when it is a bare data config."""
  return config.data if "data" in config else config


def data_dir(config) -> str:
  d = data_config(config).data_dir or config_lib.default_data_dir()
  return os.path.expanduser(os.fspath(d))


def source(config) -> DatasetSource:
  """The dataset config.data names: the manifest when config.data.manifest is set, a TFDS catalog
  dataset converted to one when config.data.tfds_name is (``TFDS_CATALOG``), else the source
  config.data.source names (mmjax.registry floor "datasets")."""
  d = data_config(config)
  if d.get("tfds_name"):
    if d.manifest:
      raise ValueError(
        f"config.data.tfds_name={d.tfds_name!r} and config.data.manifest={d.manifest!r} both name the data: "
        "set only one."
      )
    return TFDS_CATALOG
  return registry.get("datasets", "manifest" if d.manifest else d.source, "config.data.source")


def _tfds_builder_config(data) -> tfds_builders.ManifestConfig:
  """The manifest config of config.data.tfds_name's dataset, converted to a manifest (in the data dir)
  first if it is not yet: the config is named by the manifest's content, so it needs the manifest."""
  try:
    path = formats.tfds_manifest(data.tfds_name, data_dir(data))
  except ValueError as e:
    raise ValueError(f"config.data.tfds_name={data.tfds_name!r}: {e}") from e
  return tfds_builders.manifest_config(
    path,
    image_size=data.image_size,
    seed=data.seed,
    spoken_questions=data.spoken_questions,
    video_frames=data.video_frames,
    audio_sample_rate=data.audio_sample_rate,
  )


# config.data.tfds_name: a TFDS catalog dataset, once converted, is an ordinary manifest dataset.
TFDS_CATALOG = DatasetSource(builder_config=_tfds_builder_config, prepare=tfds_builders.MANIFEST.prepare)


def builder_config(config) -> tfds_builders.RecordConfig:
  """The TFDS builder config of ``config``'s dataset, known without building it (a manifest is
  only scanned)."""
  return source(config).builder_config(data_config(config))


def prepare_builder(config) -> tfds.core.DatasetBuilder:
  """Builds (if missing) the TFDS dataset of ``config`` and returns its builder."""
  return source(config).prepare(builder_config(config), data_dir(config))


def media_of(cfg: tfds_builders.RecordConfig) -> tuple[str, ...]:
  """The media ("audio", "video") the batches of a dataset with builder config ``cfg`` carry."""
  return (("audio",) if cfg.spoken_questions or cfg.scene_audio else ()) + (("video",) if cfg.video_frames else ())


def dataset_media(config) -> tuple[str, ...]:
  """The media the batches of ``config``'s dataset carry ("audio", "video"), known without building
  it."""
  return media_of(builder_config(config))


def tokenizer_path(builder) -> str:
  return os.path.join(os.fspath(builder.data_dir), TOKENIZER_FILENAME)


def tokenizer_training_texts(
  builder, records: list[dict] | None = None, dataset: DatasetSource | None = None
) -> list[str]:
  """The train split's texts, the fixed prompts, and the dataset's own vocabulary texts."""
  records = read_texts(builder, "train") if records is None else records
  texts = [CAPTION_PROMPT]
  if "audio" in media_of(builder.builder_config):
    texts += [SPOKEN_PROMPT, av_lib.PROMPT]  # the fixed prompts of the audio tasks
  if dataset is not None:
    texts += list(dataset.vocabulary_texts(builder.builder_config))
  for r in records:
    texts += r["questions"] + r["answers"] + r["captions"]
  # Boxes in markup become location tokens, not pieces (mmjax.location_tokens).
  return [strip_boxes(t) for t in texts]


def open_tokenizer(path: str, location_bins: int):
  """A saved tokenizer: mmjax's own SentencePiece file, or a directory of a pretrained one's files."""
  if os.path.isdir(path):
    return pretrained_tokenizers.load_tokenizer(path, location_bins=location_bins)
  return Tokenizer.load(path, location_bins=location_bins)


def load_tokenizer(config, builder=None) -> Tokenizer:
  """Loads ``tokenizer.model`` next to the prepared data, training it on the train split if
  missing (or if it was trained for another vocab_size, recorded in ``tokenizer.model.vocab``);
  or a pretrained checkpoint's tokenizer when ``config.data.tokenizer`` names one."""
  bins = int(data_config(config).location_bins)
  if data_config(config).get("tokenizer"):
    return pretrained_tokenizers.load_tokenizer(data_config(config).tokenizer, location_bins=bins)
  builder = builder or prepare_builder(config)
  vocab_size = int(data_config(config).vocab_size)
  path = tokenizer_path(builder)
  meta = path + ".vocab_size"
  if os.path.exists(path) and os.path.exists(meta):
    with open(meta) as f:
      if f.read().strip() == str(vocab_size):
        return Tokenizer.load(path, location_bins=bins)
  logging.info("training tokenizer (vocab_size=%d) -> %s", vocab_size, path)
  tok = Tokenizer.train(tokenizer_training_texts(builder, dataset=source(config)), path, vocab_size, location_bins=bins)
  tmp = meta + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(str(vocab_size))
  os.replace(tmp, meta)
  return tok


def prepare(config) -> tuple[tfds.core.DatasetBuilder, Tokenizer]:
  """Builds the dataset if missing and returns (builder, tokenizer)."""
  builder = prepare_builder(config)
  return builder, load_tokenizer(config, builder)


def check_split(builder, split: str, needed_by: str = "") -> None:
  """Raises ValueError when ``split`` is not in the prepared dataset.

  Only a manifest can lack a split: one whose records left it empty is built without it (TFDS
  cannot write an empty split; see manifest.py). The error names the split and the manifest, says
  how to give the split records and, with ``needed_by``, what asked for it, so that a run can fail
  before training rather than at its first evaluation.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}.")
  if split in builder.info.splits:
    return
  have = ", ".join(f"{s} {n}" for s, n in tfds_builders.split_sizes(builder).items())
  needed = f"; {needed_by} needs it" if needed_by else ""
  cfg = builder.builder_config
  if isinstance(cfg, tfds_builders.ManifestConfig):
    raise ValueError(
      f"split {split!r} has no records in the manifest {cfg.manifest_path}, so its dataset has no {split} split "
      f"(records per split: {have}){needed}. Give some of the manifest's lines \"split\": \"{split}\", or leave "
      "\"split\" out of more images: images without one are split 80/10/10 by a seeded hash, and it takes 6 "
      "of them to put one in each of validation and test."
    )
  raise ValueError(f"split {split!r} is not in the dataset {builder.data_dir} (records per split: {have}){needed}.")


def load_split(config, split: str, tokenizer: Tokenizer | None = None, builder=None) -> SplitData:
  """Prepares (builds if missing) the data and tokenizer of ``config``; returns the split (a
  ValueError naming the split and the manifest when the dataset lacks it: ``check_split``)."""
  if builder is None:
    builder = prepare_builder(config)
  check_split(builder, split)
  if tokenizer is None:
    tokenizer = load_tokenizer(config, builder)
  d = data_config(config)
  return SplitData(
    builder,
    split,
    tokenizer,
    max_prompt_len=int(d.max_prompt_len),
    max_target_len=int(d.max_target_len),
    captions=bool(d.captions),
    max_audio_seconds=float(d.max_audio_seconds),
    spoken_prompt=bool(d.spoken_prompt),
    av_matching=bool(d.av_matching),
    av_mismatch_fraction=float(d.av_mismatch_fraction),
    seed=int(d.seed),
  )
