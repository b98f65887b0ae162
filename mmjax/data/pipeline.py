"""Deterministic grain input pipeline over the prepared TFDS datasets.

Config keys (``config.data.*``; defaults in ``mmjax.data.config.default_data_config``):
  source ("manifest"), manifest (""; when set, the data), data_dir, image_size (64), seed (0),
  captions (True), max_prompt_len (16), max_target_len (64), vocab_size (512), spoken_questions
  (False), video_frames (0), audio_sample_rate (16000), max_audio_seconds (4.0), spoken_prompt
  (False), av_matching (False), av_mismatch_fraction (0.5), plus what the source reads (its own
  block, e.g. ``config.data.shapes``); and ``config.seed`` (train shuffle seed) and
  ``config.batch_size`` (global batch).

Examples are flattened from records: each (question, answer) is a VQA example (prompt = question,
target = answer), each caption a captioning example (prompt = ``CAPTION_PROMPT``, target = caption).
With ``spoken_prompt`` every VQA prompt is ``SPOKEN_PROMPT`` instead (the question is only in the
example's audio). With ``av_matching`` every record with a sound adds one audio-visual matching
example (prompt ``av_matching.PROMPT``, target yes/no; its audio is the record's sound or another
record's, see av_matching.py). Example ids index the flat list ``SplitData.index`` of
(record_idx, item_idx) (questions first, then captions, then the matching example, within a record;
the matching example's item_idx is the number of questions + captions of the record).

Batches are dicts of numpy arrays:
  image       uint8   [B, H, W, 3]
  prompt      int32   [B, Lp]   prompt tokens (no bos/eos), 0-padded, truncated to max_prompt_len
  prompt_len  int32   [B]
  target_in   int32   [B, Lt]   [bos, t1..tn, pad...]          (Lt = max_target_len;
  target_out  int32   [B, Lt]   [t1..tn, eos, pad...]           targets truncated to Lt - 1)
  target_mask float32 [B, Lt]   1 on t1..tn and eos
  task        int32   [B]       0 = vqa, 1 = caption, 2 = av_match (TASK_NAMES)
  qtype       int32   [B]       index into question_types(builder config): the dataset's own types,
                                then vqa / caption / av_match
  example_id  int32   [B]       index into the split's flat example list (-1 on padding)
  valid       bool    [B]       False on eval padding
plus, only when the dataset has audio (spoken questions, object sounds or manifest "audio"):
  audio       int16   [B, N]    mono clip at audio_sample_rate, 0-padded / cut to
                                N = round(max_audio_seconds * audio_sample_rate). VQA examples get
                                their spoken question when the dataset has spoken questions, else
                                (and captioning examples always) the record's sound; matching
                                examples the sound av_matching.pair_sounds chose.
  audio_len   int32   [B]       samples of the clip in `audio` (0: the example has no audio)
and only when the dataset has video (video_frames > 0):
  video       uint8   [B, T, H, W, 3]  the record's clip (zeros when it has none)
  video_len   int32   [B]       T, or 0 for a record without a clip (manifests) and padding

Train datasets are sharded by process (examples ``process_index::process_count``), shuffled with
``config.seed``, repeated and batched with ``drop_remainder`` (per-process batch
``config.batch_size // process_count``). Eval datasets are neither shuffled nor repeated; every
process gets the same number of batches, the tail padded with ``valid=False`` examples.
``iter(dataset)`` yields batches; its ``get_state()``/``set_state()`` resume exactly.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Sequence

import grain
import numpy as np
import tensorflow_datasets as tfds

from mmjax import registry
from mmjax.data import av_matching as av_lib, config as config_lib, schema, tfds_builders
from mmjax.data.source import DatasetSource
from mmjax.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer

CAPTION_PROMPT = "describe the image."
SPOKEN_PROMPT = "answer the spoken question."
# Example kinds every dataset has besides its own question types (qtype indices: question_types).
TASK_TYPES = ("vqa", "caption", "av_match")
TASK_VQA, TASK_CAPTION, TASK_AV_MATCH = 0, 1, 2
TASK_NAMES = ("vqa", "caption", "av_match")
TOKENIZER_FILENAME = "tokenizer.model"
SPLITS = ("train", "validation", "test")


def _data_cfg(config):
  return config.data if "data" in config else config


def data_dir(config) -> str:
  d = _data_cfg(config).data_dir or config_lib.default_data_dir()
  return os.path.expanduser(os.fspath(d))


def source(config) -> DatasetSource:
  """The dataset config.data names: the manifest when config.data.manifest is set, else the
  source config.data.source names (mmjax.registry floor "datasets")."""
  d = _data_cfg(config)
  return registry.get("datasets", "manifest" if d.manifest else d.source, "config.data.source")


def builder_config(config) -> tfds_builders.RecordConfig:
  """The TFDS builder config of ``config``'s dataset, known without building it (a manifest is
  only scanned)."""
  return source(config).builder_config(_data_cfg(config))


def prepare_builder(config) -> tfds.core.DatasetBuilder:
  """Builds (if missing) the TFDS dataset of ``config`` and returns its builder."""
  return source(config).prepare(builder_config(config), data_dir(config))


def question_types(cfg: tfds_builders.RecordConfig) -> tuple[str, ...]:
  """What the batches' ``qtype`` indexes: the dataset's question types, then the task types."""
  own = tuple(cfg.question_types)
  return own + tuple(t for t in TASK_TYPES if t not in own)


def _media_of(cfg: tfds_builders.RecordConfig) -> tuple[str, ...]:
  return (("audio",) if cfg.spoken_questions or cfg.scene_audio else ()) + (("video",) if cfg.video_frames else ())


def dataset_media(config) -> tuple[str, ...]:
  """The media the batches of ``config``'s dataset carry ("audio", "video"), known without building
  it."""
  return _media_of(builder_config(config))


def _decode(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def _read_texts(builder, split: str, sound_keys: bool = False) -> list[dict]:
  """Text fields of every record of ``split`` (image and media decoding skipped); with
  ``sound_keys`` also "sound": ``av_matching.sound_key`` of the record's ``scene_audio``."""
  if split not in builder.info.splits or builder.info.splits[split].num_examples == 0:
    return []
  src = _source(builder, split, skip=("image",) + schema.MEDIA_KEYS)
  out = []
  n, chunk = len(src), 1024
  rows = []
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    rows.extend(src.__getitems__(idx) if hasattr(src, "__getitems__") else [src[i] for i in idx])
  sound = builder.info.features["scene_audio"] if sound_keys else None
  for r in rows:
    out.append(
      {k: [_decode(v) for v in r[k]] for k in ("questions", "answers", "question_types", "captions")}
      | {"id": _decode(r["id"])}
      | ({"sound": av_lib.sound_key(sound.decode_example_np(r["scene_audio"]))} if sound_keys else {})
    )
  return out


def _source(builder, split: str, skip=()):
  """``builder.as_data_source(split)`` that leaves the features ``skip`` undecoded."""
  skip = [k for k in skip if k in builder.info.features]
  return builder.as_data_source(split, decoders={k: tfds.decode.SkipDecoding() for k in skip})


def tokenizer_path(builder) -> str:
  return os.path.join(os.fspath(builder.data_dir), TOKENIZER_FILENAME)


def tokenizer_training_texts(
  builder, records: list[dict] | None = None, dataset: DatasetSource | None = None
) -> list[str]:
  """The train split's texts, the fixed prompts, and the dataset's own vocabulary texts."""
  records = _read_texts(builder, "train") if records is None else records
  texts = [CAPTION_PROMPT]
  if "audio" in _media_of(builder.builder_config):
    texts += [SPOKEN_PROMPT, av_lib.PROMPT]  # the fixed prompts of the audio tasks
  if dataset is not None:
    texts += list(dataset.vocabulary_texts(builder.builder_config))
  for r in records:
    texts += r["questions"] + r["answers"] + r["captions"]
  return texts


def load_tokenizer(config, builder=None) -> Tokenizer:
  """Loads ``tokenizer.model`` next to the prepared data, training it on the train split if
  missing (or if it was trained for another vocab_size, recorded in ``tokenizer.model.vocab``)."""
  builder = builder or prepare_builder(config)
  vocab_size = int(_data_cfg(config).vocab_size)
  path = tokenizer_path(builder)
  meta = path + ".vocab_size"
  if os.path.exists(path) and os.path.exists(meta):
    with open(meta) as f:
      if f.read().strip() == str(vocab_size):
        return Tokenizer.load(path)
  logging.info("training tokenizer (vocab_size=%d) -> %s", vocab_size, path)
  tok = Tokenizer.train(tokenizer_training_texts(builder, dataset=source(config)), path, vocab_size)
  tmp = meta + f".tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(str(vocab_size))
  os.replace(tmp, meta)
  return tok


def prepare(config) -> tuple[tfds.core.DatasetBuilder, Tokenizer]:
  """Builds the dataset if missing and returns (builder, tokenizer)."""
  builder = prepare_builder(config)
  return builder, load_tokenizer(config, builder)


class SplitData:
  """Random access to the flattened examples of one split (images and media read lazily)."""

  def __init__(
    self,
    builder,
    split: str,
    tokenizer: Tokenizer,
    *,
    max_prompt_len: int = 16,
    max_target_len: int = 64,
    captions: bool = True,
    max_audio_seconds: float = 4.0,
    spoken_prompt: bool = False,
    av_matching: bool = False,
    av_mismatch_fraction: float = 0.5,
    seed: int = 0,
  ):
    self.builder, self.split, self.tokenizer = builder, split, tokenizer
    self.max_prompt_len, self.max_target_len = int(max_prompt_len), int(max_target_len)
    if self.max_target_len < 2:
      raise ValueError("max_target_len must be >= 2")
    # Media the dataset has (see schema.py); none -> examples are exactly the image/text ones.
    features, cfg = builder.info.features, builder.builder_config
    self.spoken_questions = "question_audio" in features
    self.scene_audio = "scene_audio" in features
    _check_tasks(self, spoken_prompt, av_matching)
    self.spoken_prompt = bool(spoken_prompt)
    self.records = _read_texts(builder, split, sound_keys=av_matching)
    self._source = builder.as_data_source(split) if self.records else None
    self._sound_source = (
      _source(builder, split, skip=("image",) + tuple(k for k in schema.MEDIA_KEYS if k != "scene_audio"))
      if av_matching and self.records
      else None
    )
    self.image_size = int(builder.info.features["image"].shape[0])
    self.max_audio_len = (
      config_lib.max_audio_samples({"max_audio_seconds": max_audio_seconds, "audio_sample_rate": cfg.audio_sample_rate})
      if self.spoken_questions or self.scene_audio
      else 0
    )
    self.video_frames = int(cfg.video_frames) if "video" in features else 0
    # Matching examples: whose sound each record's example hears (-1: none; see av_matching.py).
    self.av_partner = (
      av_lib.pair_sounds(
        [r["sound"] for r in self.records], av_mismatch_fraction, [int(seed), SPLITS.index(split), 0xA7]
      )
      if av_matching
      else np.full(len(self.records), -1, np.int64)
    )
    self.question_types = question_types(cfg)
    qtype_of = {t: i for i, t in enumerate(self.question_types)}
    index, task, qtype, prompts, targets = [], [], [], [], []
    self._cache = {}
    self.truncated = {"prompt": set(), "target": set()}  # distinct texts longer than their array
    caption_prompt = self._prompt(CAPTION_PROMPT)
    for ri, r in enumerate(self.records):
      nq, nc = len(r["questions"]), len(r["captions"])
      for j, (q, a, qt) in enumerate(zip(r["questions"], r["answers"], r["question_types"])):
        index.append((ri, j))
        task.append(TASK_VQA)
        qtype.append(qtype_of[qt] if qt in qtype_of else qtype_of["vqa"])
        prompts.append(self._prompt(SPOKEN_PROMPT if spoken_prompt else q))
        targets.append(self._target(a))
      if captions:
        for k, c in enumerate(r["captions"]):
          index.append((ri, nq + k))
          task.append(TASK_CAPTION)
          qtype.append(qtype_of["caption"])
          prompts.append(caption_prompt)
          targets.append(self._target(c))
      if self.av_partner[ri] >= 0:
        index.append((ri, nq + nc))
        task.append(TASK_AV_MATCH)
        qtype.append(qtype_of["av_match"])
        prompts.append(self._prompt(av_lib.PROMPT))
        targets.append(self._target(av_lib.answer(ri, self.av_partner[ri])))
    self.index = np.asarray(index, np.int64).reshape(-1, 2)
    self.task = np.asarray(task, np.int32)
    self.qtype = np.asarray(qtype, np.int32)
    self._prompts = prompts
    self._targets = targets
    del self._cache
    self._warn_truncated()

  def _warn_truncated(self):
    """Truncation is the documented behaviour, but a question cut short is a different question:
    say so, naming the flag that lengthens the arrays."""
    flags = {"prompt": ("max_prompt_len", self.max_prompt_len), "target": ("max_target_len", self.max_target_len - 1)}
    for kind, texts in self.truncated.items():
      if texts:
        flag, room = flags[kind]
        logging.warning(
          "split %r: %d distinct %ss are longer than the %d tokens config.data.%s leaves them and are "
          "truncated (e.g. %r); raise --config.data.%s to keep them whole.",
          self.split,
          len(texts),
          kind,
          room,
          flag,
          min(texts, key=len),
          flag,
        )

  def _prompt(self, text):
    key = ("p", text)
    if key not in self._cache:
      self._cache[key] = self._make_prompt(text)
    return self._cache[key]

  def _target(self, text):
    key = ("t", text)
    if key not in self._cache:
      self._cache[key] = self._make_target(text)
    return self._cache[key]

  def _make_prompt(self, text):
    ids = self.tokenizer.encode(text)
    if len(ids) > self.max_prompt_len:
      self.truncated["prompt"].add(text)
    ids = ids[: self.max_prompt_len]
    p = np.zeros(self.max_prompt_len, np.int32)
    p[: len(ids)] = ids
    return p, len(ids)

  def _make_target(self, text):
    ids = self.tokenizer.encode(text)
    if len(ids) > self.max_target_len - 1:
      self.truncated["target"].add(text)
    ids = ids[: self.max_target_len - 1]
    n, lt = len(ids), self.max_target_len
    t_in = np.full(lt, PAD_ID, np.int32)
    t_out = np.full(lt, PAD_ID, np.int32)
    mask = np.zeros(lt, np.float32)
    t_in[0] = BOS_ID
    t_in[1 : n + 1] = ids
    t_out[:n] = ids
    t_out[n] = EOS_ID
    mask[: n + 1] = 1.0
    return t_in, t_out, mask

  def __len__(self) -> int:
    return len(self.index)

  def target_length(self, task: int) -> int:
    """Target array length that fits every example of `task` (BOS/EOS included)."""
    lengths = [int(m.sum()) for (_, _, m), t in zip(self._targets, self.task) if t == task]
    return min(self.max_target_len, max(lengths, default=1) + 1)

  def references(self, example_id: int):
    """Reference text(s) of an example: the answer (str) for VQA, all captions (list) for
    captioning."""
    ri, j = (int(v) for v in self.index[int(example_id)])
    r = self.records[ri]
    if self.task[example_id] == TASK_VQA:
      return r["answers"][j]
    if self.task[example_id] == TASK_AV_MATCH:
      return av_lib.answer(ri, self.av_partner[ri])
    return list(r["captions"])

  def prompt_text(self, example_id: int) -> str:
    """The text prompt the model reads (for spoken VQA the fixed prompt, not the question)."""
    ri, j = (int(v) for v in self.index[int(example_id)])
    if self.task[example_id] == TASK_VQA:
      return SPOKEN_PROMPT if self.spoken_prompt else self.records[ri]["questions"][j]
    if self.task[example_id] == TASK_AV_MATCH:
      return av_lib.PROMPT
    return CAPTION_PROMPT

  def record_id(self, example_id: int) -> str:
    return self.records[int(self.index[int(example_id)][0])]["id"]

  def example(self, example_id: int, media: bool = True) -> dict:
    """One example (numpy arrays); ``example_id < 0`` gives an all-zero padding example.
    ``media=False``: the text entries only (no image or other media is decoded)."""
    example_id = int(example_id)
    if example_id < 0:
      return self.padding_example()
    ri, j = (int(v) for v in self.index[example_id])
    prompt, plen = self._prompts[example_id]
    task = self.task[example_id]
    t_in, t_out, mask = self._targets[example_id]
    text = {
      "prompt": prompt,
      "prompt_len": np.int32(plen),
      "target_in": t_in,
      "target_out": t_out,
      "target_mask": mask,
      "task": np.int32(task),
      "qtype": np.int32(self.qtype[example_id]),
      "example_id": np.int32(example_id),
      "valid": np.bool_(True),
    }
    if not media:
      return text
    record = self._source[ri]
    return (
      {"image": np.asarray(record["image"], np.uint8)}
      | text
      | self._media(
        record, j if task == TASK_VQA else None, int(self.av_partner[ri]) if task == TASK_AV_MATCH else None
      )
    )

  def image_of(self, example_id: int) -> np.ndarray:
    """The image an example is about (nothing else of its record is decoded)."""
    return self._source[int(self.index[int(example_id)][0])]["image"]

  def _media(self, record=None, question: int | None = None, sound_of: int | None = None) -> dict:
    """The audio/video entries of an example (see the module doc); {} for a dataset without
    media. ``record=None`` gives the padding entries; ``sound_of``: the record whose sound a
    matching example hears."""
    out = {}
    if self.max_audio_len:
      clip = self._sound(sound_of) if sound_of is not None else self._audio_clip(record, question)
      out["audio"], out["audio_len"] = fit_clip(clip, self.max_audio_len)
    if self.video_frames:
      clip = schema.no_video(self.image_size) if record is None else record["video"]
      out["video"], out["video_len"] = fit_clip(clip, self.video_frames)
    return out

  def _sound(self, record_index: int) -> np.ndarray:
    """The ``scene_audio`` of record ``record_index`` (its image and other media not decoded)."""
    return self._sound_source[int(record_index)]["scene_audio"]

  def _audio_clip(self, record, question: int | None) -> np.ndarray:
    """What an example hears: its spoken question (VQA), else the record's sound, else nothing."""
    if record is not None and question is not None and self.spoken_questions:
      return schema.unpack_clips(record)[question]
    if record is not None and self.scene_audio:
      return record["scene_audio"]
    return schema.no_audio()

  def padding_example(self) -> dict:
    s, lp, lt = self.image_size, self.max_prompt_len, self.max_target_len
    return {
      "image": np.zeros((s, s, 3), np.uint8),
      "prompt": np.zeros(lp, np.int32),
      "prompt_len": np.int32(0),
      "target_in": np.zeros(lt, np.int32),
      "target_out": np.zeros(lt, np.int32),
      "target_mask": np.zeros(lt, np.float32),
      "task": np.int32(0),
      "qtype": np.int32(0),
      "example_id": np.int32(-1),
      "valid": np.bool_(False),
    } | self._media()


def _check_tasks(data: SplitData, spoken_prompt: bool, av: bool) -> None:
  """The audio tasks need the audio they are about; errors name the config keys to set."""
  if spoken_prompt and not data.spoken_questions:
    raise ValueError(
      "config.data.spoken_prompt=True takes the question out of the text prompt, but this "
      "dataset has no spoken questions: set --config.data.spoken_questions=True as well."
    )
  if av and not data.scene_audio:
    raise ValueError(
      "config.data.av_matching=True pairs images with their sounds, but this dataset has no "
      "per-record sound: give the manifest's records \"audio\" files, or turn on the dataset's own "
      "sounds (a procedural dataset's sound option in its config block)."
    )


def fit_clip(x: np.ndarray, length: int) -> tuple[np.ndarray, np.int32]:
  """``x`` cut or zero-padded to ``length`` along its first axis, and how many entries are real.

  How every example's clip becomes the fixed-length batch entry (audio, video); sampling from a
  file (sample.predict.load_audio) goes through it too, so the model hears a file as it heard the
  dataset's clips."""
  x = np.asarray(x)[:length]
  out = np.zeros((length,) + x.shape[1:], x.dtype)
  out[: len(x)] = x
  return out, np.int32(len(x))


class _Ids:
  """A random-access sequence of example ids (a grain source)."""

  def __init__(self, ids: Sequence[int]):
    self._ids = np.asarray(ids, np.int64)

  def __len__(self):
    return len(self._ids)

  def __getitem__(self, i):
    return int(self._ids[i])


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
  d = _data_cfg(config)
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


def task_mixing_weights(config) -> dict[str, float]:
  """config.data.task_weights completed with 1.0 for the tasks it leaves out; a clear error for an
  unknown task or a weight that is negative or not a number."""
  given = _data_cfg(config).task_weights or {}
  given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
  unknown = sorted(set(given) - set(TASK_NAMES))
  if unknown:
    raise ValueError(f"config.data.task_weights has unknown tasks {unknown}; expected some of {TASK_NAMES}.")
  weights = {t: 1.0 for t in TASK_NAMES}
  for task, w in given.items():
    try:
      w = float(w)
    except (TypeError, ValueError):
      w = float("nan")
    if not (math.isfinite(w) and w >= 0):
      raise ValueError(f"config.data.task_weights.{task}={given[task]!r}: a weight must be a number >= 0.")
    weights[task] = w
  return weights


def _image_groups(data: "SplitData", ids: np.ndarray) -> list[np.ndarray]:
  """The example ids of `ids` grouped by the record (image) they ask about, records in order."""
  records = data.index[ids, 0]
  order = np.argsort(records, kind="stable")
  bounds = np.flatnonzero(np.diff(records[order])) + 1
  return np.split(ids[order], bounds)


def _load_groups(
  groups_batch,
  rng: np.random.Generator,
  groups: list[np.ndarray],
  data: "SplitData",
  rows: slice,
  per_image: int,
  length: int,
  captions=None,
) -> dict:
  """A global batch of image groups -> this process's rows: one image per group and `per_image`
  of its questions (a random draw without repeats; cycled when the image has fewer).

  captions = (caption example ids per group, target length, loss weight): adds each image's
  caption (one drawn at random where it has several) as the CAPTION keys, [images, ...]."""
  # Every process draws for the whole global batch, so N processes load exactly the rows of one.
  picks = [np.resize(rng.permutation(groups[int(g)]), per_image) for g in np.asarray(groups_batch)]
  chosen = (
    [int(rng.choice(captions[0][int(g)])) if len(captions[0][int(g)]) else -1 for g in np.asarray(groups_batch)]
    if captions
    else None
  )
  images, examples = [], []
  for ids in picks[rows]:
    images.append(np.asarray(data.image_of(int(ids[0])), np.uint8))  # decoded once per group
    examples.extend(_truncate_targets(data.example(int(i), media=False), length) for i in ids)
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  batch["image"] = np.stack(images)
  if captions:
    # An image without a caption gets an empty one (id -1: the padding example, mask 0).
    batch |= _caption_keys(data, chosen[rows], *captions[1:])
  return batch


def _caption_keys(data: "SplitData", ids, length: int, weight: float) -> dict:
  """The CAPTION_FIELDS batch keys of caption examples `ids` (-1: an empty caption), targets cut
  to `length`, the mask scaled by `weight`."""
  rows = [_truncate_targets(data.example(int(i), media=False), length) for i in ids]
  out = {key: np.stack([r[field] for r in rows]) for key, field in config_lib.CAPTION_FIELDS.items()}
  out["caption_mask"] = out["caption_mask"] * np.float32(weight)
  return out


def _captions_of_groups(data: "SplitData", groups: list[np.ndarray]) -> list[np.ndarray]:
  """The caption example ids of each group's image (empty for an image without a caption)."""
  by_record: dict[int, list[int]] = {}
  for e in np.flatnonzero(data.task == TASK_CAPTION):
    by_record.setdefault(int(data.index[e, 0]), []).append(int(e))
  return [np.asarray(by_record.get(int(data.index[g[0], 0]), []), np.int64) for g in groups]


def shard_ids(n: int, process_index: int, process_count: int) -> np.ndarray:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return np.arange(n)[process_index::process_count]


def make_dataset(
  config,
  split: str,
  data: SplitData | None = None,
  *,
  train: bool | None = None,
  batch_size: int | None = None,
  process_index: int = 0,
  process_count: int = 1,
  num_threads: int = 0,
):
  """The batched grain dataset of ``split``.

  train (default: split == "train"): shard, shuffle(config.seed), repeat, batch(drop_remainder).
  eval: shard, pad to the same number of full batches on every process, batch.
  batch_size is per process (default ``config.batch_size // process_count``).
  num_threads > 0 reads examples with that many threads (an IterDataset; its iterator also
  supports get_state/set_state); 0 returns a MapDataset.
  """
  data = data if data is not None else load_split(config, split)
  train = (split == "train") if train is None else train
  if batch_size is None:
    batch_size = int(config.batch_size) // process_count
  if batch_size <= 0:
    raise ValueError(f"per-process batch size must be positive (got {batch_size})")
  ids = shard_ids(len(data), process_index, process_count)
  if train:
    if len(ids) == 0:
      raise ValueError(f"split {split!r} has no examples for process {process_index}")
    ds = grain.MapDataset.source(_Ids(ids)).shuffle(seed=int(config.seed)).repeat()
  else:
    per_process = math.ceil(len(data) / process_count)
    padded = max(1, math.ceil(per_process / batch_size)) * batch_size
    ids = np.concatenate([ids, -np.ones(padded - len(ids), np.int64)])
    ds = grain.MapDataset.source(_Ids(ids))
  ds = ds.map(data.example)
  if num_threads > 0:
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size))
  return ds.batch(batch_size, drop_remainder=train)


def _truncate_targets(example: dict, length: int) -> dict:
  return example | {k: example[k][:length] for k in ("target_in", "target_out", "target_mask")}


def _load_rows(ids: np.ndarray, data: SplitData, rows: slice, length: int, caption_length: int = 0) -> dict:
  """This process's rows of a global batch of example ids -> a stacked batch (targets truncated).
  caption_length > 0: adds empty CAPTION keys (mask 0), so that with captions_with_questions every
  train batch has the same keys."""
  examples = [_truncate_targets(data.example(int(i)), length) for i in np.asarray(ids)[rows]]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  if caption_length:
    batch |= _caption_keys(data, [-1] * len(examples), caption_length, 0.0)
  return batch


class Data:
  """What the trainer, evaluator and sampler need from a prepared dataset, behind one object.

  data = Data(config[, tokenizer_path]); data.tokenizer; data.train_iterator(...) is a grain
  iterator whose get_state()/set_state() checkpoint the input position; data.eval_batches(...)
  yields padded batches with a `valid` mask.
  """

  def __init__(self, config, tokenizer_path: str | None = None):
    self.config = config
    self.source = source(config)
    self.builder = prepare_builder(config)
    self.tokenizer = Tokenizer.load(tokenizer_path) if tokenizer_path else load_tokenizer(config, self.builder)
    self._splits: dict[str, SplitData] = {}

  def split(self, name: str) -> SplitData:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}.")
    if name not in self._splits:
      self._splits[name] = load_split(self.config, name, self.tokenizer, self.builder)
    return self._splits[name]

  def train_iterator(self, process_index: int = 0, process_count: int = 1, tasks: Sequence[str] | None = None):
    """Endless shuffled batches of this process's rows of the global train batch.

    tasks: the TASK_NAMES whose examples to train on (None: every task of the split), e.g.
    ("caption",) for the (image, caption) pairs a contrastive model trains on.

    With config.data.questions_per_image = G > 1 every batch holds batch_size / G images: a VQA
    batch G questions about each (rows i*G .. i*G+G-1 ask about image i; "image" has batch_size / G
    rows, every other key batch_size), so the model encodes each image once for its G questions; a
    caption or matching batch one example per image (batch_size / G rows). With
    config.data.captions_with_questions the VQA batches also carry their images' captions
    (caption_prompt, caption_prompt_len, caption_in, caption_out, caption_mask: batch_size / G rows,
    the mask scaled by task_weights.caption; an image without a caption has mask 0); caption
    batches are then mixed in only for images that have no questions.

    VQA, captioning and matching examples are batched separately and the batches interleaved in
    proportion to the number of examples of each task times its config.data.task_weights entry
    (default 1; 0 drops the task) by grain's deterministic mix, so a VQA batch
    carries targets only as long as the longest answer instead of the longest caption: most steps
    then cost a fraction of a caption step.

    Several processes: every process shuffles the whole split identically and batches example ids
    at the global batch size (config.batch_size); process i then loads only rows
    [i*B/N, (i+1)*B/N) of each global batch. N processes together therefore produce exactly the
    batches of one process, whatever N (and resume at the same position). The iterator's
    get_state()/set_state() give the exact position in this stream.
    """
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    data = self.split("train")
    global_batch = int(self.config.batch_size)
    if global_batch % process_count:
      raise ValueError(f"batch_size={global_batch} is not divisible by the {process_count} processes.")
    local = global_batch // process_count
    rows = slice(process_index * local, (process_index + 1) * local)
    unknown = set(tasks or ()) - set(TASK_NAMES)
    if unknown:
      raise ValueError(f"unknown tasks {sorted(unknown)}; expected some of {TASK_NAMES}.")
    task_weights = task_mixing_weights(self.config)
    per_image = config_lib.questions_per_image(self.config)
    joint_captions = (
      config_lib.captions_with_questions(self.config)
      and (tasks is None or {"vqa", "caption"} <= set(tasks))
      and bool((data.task == TASK_VQA).any())
    )
    with_questions = set(data.index[data.task == TASK_VQA, 0].tolist()) if joint_captions else set()
    if per_image > 1 and self.media:
      raise ValueError(
        f"config.data.questions_per_image={per_image} groups questions about one image, but this "
        f"dataset's examples also carry {'/'.join(self.media)} of their own; set it to 1."
      )
    if per_image > 1 and local % per_image:
      raise ValueError(
        f"config.batch_size={global_batch} over {process_count} processes gives {local} rows per "
        f"process, not a multiple of config.data.questions_per_image={per_image}."
      )
    streams, weights = [], []
    for task in range(len(TASK_NAMES)):
      if tasks is not None and TASK_NAMES[task] not in tasks:
        continue
      ids = np.flatnonzero(data.task == task)
      if joint_captions and task == TASK_CAPTION:
        # Captions of images with questions come with them; the others still get caption batches.
        ids = np.asarray([i for i in ids if int(data.index[i, 0]) not in with_questions], np.int64)
      if len(ids) == 0 or task_weights[TASK_NAMES[task]] == 0:
        continue
      length = data.target_length(task)
      seed = int(self.config.seed) * 2 + task
      if task == TASK_VQA and per_image > 1:
        # Batches of images, each with per_image of its questions: the model encodes an image
        # once for all of them (the image batch is batch_size / questions_per_image).
        groups = _image_groups(data, ids)
        image_rows = slice(rows.start // per_image, rows.stop // per_image)
        captions = None
        if joint_captions:
          captions = (_captions_of_groups(data, groups), data.target_length(TASK_CAPTION), task_weights["caption"])
        load = functools.partial(
          _load_groups, groups=groups, data=data, rows=image_rows, per_image=per_image, length=length, captions=captions
        )
        ds = (
          grain.MapDataset.source(_Ids(np.arange(len(groups))))
          .shuffle(seed=seed)
          .repeat()
          .batch(global_batch // per_image, drop_remainder=True)
          .random_map(load, seed=seed)
        )
      else:
        # With shared images every batch holds the same number of images: a caption batch is then
        # batch_size / questions_per_image examples, about as cheap as a VQA batch.
        task_batch, task_rows = global_batch // per_image, slice(rows.start // per_image, rows.stop // per_image)
        load = functools.partial(
          _load_rows,
          data=data,
          rows=task_rows,
          length=length,
          caption_length=data.target_length(TASK_CAPTION) if joint_captions else 0,
        )
        ds = (
          grain.MapDataset.source(_Ids(ids))
          .shuffle(seed=seed)
          .repeat()
          .batch(task_batch, drop_remainder=True)
          .map(load)
        )
      streams.append(ds)
      weights.append(len(ids) * task_weights[TASK_NAMES[task]])
    if not streams:
      what = "" if tasks is None else f" of the tasks {tuple(tasks)}"
      raise ValueError(f"the train split of {self.builder.name} has no examples{what}.")
    return iter(streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, weights))

  def eval_batches(
    self, split: str, batch_size: int, max_examples: int = 0, process_index: int = 0, process_count: int = 1
  ):
    """Batches of `split` (its first `max_examples` examples when > 0), every batch full size:
    padding rows have valid=False. Every process yields the same number of batches."""
    data = self.split(split)
    n = len(data) if max_examples <= 0 else min(max_examples, len(data))
    if n == 0:
      raise ValueError(f"split {split!r} of {self.builder.name} has no examples.")
    per_process = batch_size // process_count
    ids = shard_ids(n, process_index, process_count)
    # VQA first, then captions: a batch of short answers stops decoding after a few tokens.
    ids = ids[np.argsort(data.task[ids], kind="stable")]
    padded = max(1, math.ceil(math.ceil(n / process_count) / per_process)) * per_process
    ids = np.concatenate([ids, -np.ones(padded - len(ids), np.int64)])
    for start in range(0, padded, per_process):
      rows = [data.example(i) for i in ids[start : start + per_process]]
      yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def references(self, split: str, example_id: int) -> list[str]:
    refs = self.split(split).references(example_id)
    return [refs] if isinstance(refs, str) else list(refs)

  def image(self, split: str, example_id: int) -> np.ndarray:
    return self.split(split).example(example_id)["image"]

  @property
  def media(self) -> tuple[str, ...]:
    """The media the batches carry: "audio" (batch keys audio, audio_len) and/or "video"."""
    return _media_of(self.builder.builder_config)

  @staticmethod
  def task_name(task: int) -> str:
    return TASK_NAMES[task]

  def qtype_name(self, qtype: int) -> str:
    return question_types(self.builder.builder_config)[qtype]
