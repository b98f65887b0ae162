"""The examples of one split of a prepared dataset: how records become examples and how an example's
arrays are built (``SplitData``).

Examples are flattened from records: each (question, answer) is a VQA example (prompt = question,
target = answer), each caption a captioning example (prompt = ``CAPTION_PROMPT``, target = caption).
A question whose type is one of ``GROUNDING_TASKS`` (refer, detect, grounded_caption, grounded_vqa)
is an example of that task instead of VQA: its text holds boxes in markup (mmjax.location_tokens),
which become the run's location tokens here (config.data.location_bins), so one prepared dataset
serves any bin count.
With ``spoken_prompt`` every VQA prompt is ``SPOKEN_PROMPT`` instead (the question is only in the
example's audio). With ``av_matching`` every record with a sound adds one audio-visual matching
example (prompt ``av_matching.PROMPT``, target yes/no; its audio is the record's sound or another
record's, see av_matching.py). Example ids index the flat list ``SplitData.index`` of
(record_idx, item_idx) (questions first, then captions, then the matching example, within a record;
the matching example's item_idx is the number of questions + captions of the record).

An example (``SplitData.example``) is a dict of numpy arrays, the rows of a batch (batching.py):
  image       uint8   [H, W, 3]
  prompt      int32   [Lp]   prompt tokens (no bos/eos), 0-padded, truncated to max_prompt_len
  prompt_len  int32   []
  target_in   int32   [Lt]   [bos, t1..tn, pad...]          (Lt = max_target_len;
  target_out  int32   [Lt]   [t1..tn, eos, pad...]           targets truncated to Lt - 1)
  target_mask float32 [Lt]   1 on t1..tn and eos
  task        int32   []     index into TASK_NAMES: 0 = vqa, 1 = caption, 2 = av_match, 3.. grounding
  qtype       int32   []     index into question_types(builder config): the dataset's own types,
                             then vqa / caption / av_match
  example_id  int32   []     index into the split's flat example list (-1 on padding)
  valid       bool    []     False on the padding example
plus, only when the dataset has audio (spoken questions, object sounds or manifest "audio"):
  audio       int16   [N]    mono clip at audio_sample_rate, 0-padded / cut to
                             N = round(max_audio_seconds * audio_sample_rate). VQA examples get
                             their spoken question when the dataset has spoken questions, else
                             (and captioning examples always) the record's sound; matching
                             examples the sound av_matching.pair_sounds chose.
  audio_len   int32   []     samples of the clip in `audio` (0: the example has no audio)
and only when the dataset has video (video_frames > 0):
  video       uint8   [T, H, W, 3]  the record's clip (zeros when it has none)
  video_len   int32   []     T, or 0 for a record without a clip (manifests) and padding
"""

from __future__ import annotations

import logging

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import av_matching as av_lib, config as config_lib, schema, tfds_builders
from mmjax.data.tasks import GROUNDING_TASKS, TASK_AV_MATCH, TASK_CAPTION, TASK_NAMES, TASK_VQA  # noqa: F401 (re-exported)
from mmjax.location_tokens import has_boxes
from mmjax.tokenizer import Tokenizer

CAPTION_PROMPT = "describe the image."
SPOKEN_PROMPT = "answer the spoken question."
# The prompt of grounded captions (each object phrase followed by its box, Kosmos-2 style).
GROUNDED_CAPTION_PROMPT = "describe the image with boxes."

SPLITS = ("train", "validation", "test")


def question_types(cfg: tfds_builders.RecordConfig) -> tuple[str, ...]:
  """What the examples' ``qtype`` indexes: the dataset's question types, then the task names."""
  own = tuple(cfg.question_types)
  return own + tuple(t for t in TASK_NAMES if t not in own)


def _decode(x) -> str:
  return x.decode("utf-8") if isinstance(x, (bytes, np.bytes_)) else str(x)


def data_source(builder, split: str, skip=()):
  """``builder.as_data_source(split)`` that leaves the features ``skip`` undecoded."""
  skip = [k for k in skip if k in builder.info.features]
  return builder.as_data_source(split, decoders={k: tfds.decode.SkipDecoding() for k in skip})


def read_texts(builder, split: str, sound_keys: bool = False) -> list[dict]:
  """Text fields of every record of ``split`` (image and media decoding skipped); with
  ``sound_keys`` also "sound": ``av_matching.sound_key`` of the record's ``scene_audio``."""
  if split not in builder.info.splits or builder.info.splits[split].num_examples == 0:
    return []
  src = data_source(builder, split, skip=("image",) + schema.MEDIA_KEYS)
  out = []
  n, chunk = len(src), 1024
  rows = []
  for start in range(0, n, chunk):
    idx = list(range(start, min(n, start + chunk)))
    rows.extend(src.__getitems__(idx) if hasattr(src, "__getitems__") else [src[i] for i in idx])
  sound = builder.info.features["scene_audio"] if sound_keys else None
  humans = "reference_answer_counts" in builder.info.features  # a manifest with "answers" lines
  for r in rows:
    out.append(
      {k: [_decode(v) for v in r[k]] for k in ("questions", "answers", "question_types", "captions")}
      | {"id": _decode(r["id"])}
      | ({"human_answers": tfds_builders.unpack_reference_answers(r)} if humans else {})
      | ({"sound": av_lib.sound_key(sound.decode_example_np(r["scene_audio"]))} if sound_keys else {})
    )
  return out


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
    self.records = read_texts(builder, split, sound_keys=av_matching)
    self._source = builder.as_data_source(split) if self.records else None
    self._sound_source = (
      data_source(builder, split, skip=("image",) + tuple(k for k in schema.MEDIA_KEYS if k != "scene_audio"))
      if av_matching and self.records
      else None
    )
    self.image_size = int(builder.info.features["image"].shape[0])
    self.max_audio_len = (
      config_lib.max_audio_samples(
        ml_collections.ConfigDict({"max_audio_seconds": max_audio_seconds, "audio_sample_rate": cfg.audio_sample_rate})
      )
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
        grounding = qt in GROUNDING_TASKS
        task.append(TASK_NAMES.index(qt) if grounding else TASK_VQA)
        qtype.append(qtype_of[qt] if qt in qtype_of else qtype_of["vqa"])
        where = f"split {split!r} record {r['id']!r} question {j}"
        prompts.append(self._prompt(SPOKEN_PROMPT if spoken_prompt and not grounding else q, where))
        targets.append(self._target(a, where))
      if captions:
        for k, c in enumerate(r["captions"]):
          index.append((ri, nq + k))
          task.append(TASK_CAPTION)
          qtype.append(qtype_of["caption"])
          prompts.append(caption_prompt)
          targets.append(self._target(c, f"split {split!r} record {r['id']!r} caption {k}"))
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
          "truncated (e.g. %r); raise config.data.%s to keep them whole.",
          self.split,
          len(texts),
          kind,
          room,
          flag,
          min(texts, key=len),
          flag,
        )

  def _prompt(self, text, where=""):
    key = ("p", text)
    if key not in self._cache:
      self._cache[key] = self._make_prompt(text, where)
    return self._cache[key]

  def _target(self, text, where=""):
    key = ("t", text)
    if key not in self._cache:
      self._cache[key] = self._make_target(text, where)
    return self._cache[key]

  def _encode(self, text: str, where: str) -> list[int]:
    """Token ids of a dataset text, its boxes in markup turned into the run's location tokens."""
    if has_boxes(text):
      if self.tokenizer.locations is None:
        raise ValueError(
          f"{where} holds boxes ({text[:60]!r}...) but the tokenizer has no location tokens: set "
          "config.data.location_bins (e.g. 64), or drop the grounding tasks (config.data.task_weights)."
        )
      text = self.tokenizer.locations.render(text, where)
    return self.tokenizer.encode(text)

  def _make_prompt(self, text, where=""):
    ids = self._encode(text, where)
    if len(ids) > self.max_prompt_len:
      self.truncated["prompt"].add(text)
    ids = ids[: self.max_prompt_len]
    p = np.zeros(self.max_prompt_len, np.int32)
    p[: len(ids)] = ids
    return p, len(ids)

  def _make_target(self, text, where=""):
    ids = self._encode(text, where)
    if len(ids) > self.max_target_len - 1:
      self.truncated["target"].add(text)
    ids = ids[: self.max_target_len - 1]
    n, lt = len(ids), self.max_target_len
    tok = self.tokenizer  # a pretrained tokenizer has its own special ids
    t_in = np.full(lt, tok.pad_id, np.int32)
    t_out = np.full(lt, tok.pad_id, np.int32)
    mask = np.zeros(lt, np.float32)
    t_in[0] = tok.bos_id
    t_in[1 : n + 1] = ids
    t_out[:n] = ids
    t_out[n] = tok.eos_id
    mask[: n + 1] = 1.0
    return t_in, t_out, mask

  def __len__(self) -> int:
    return len(self.index)

  def target_length(self, task: int) -> int:
    """Target array length that fits every example of `task` (BOS/EOS included)."""
    lengths = [int(m.sum()) for (_, _, m), t in zip(self._targets, self.task) if t == task]
    return min(self.max_target_len, max(lengths, default=1) + 1)

  def references(self, example_id: int):
    """Reference text(s) of an example: the answer (str) for VQA, or its human answers (list) when the
    manifest gave them; all captions (list) for captioning."""
    ri, j = (int(v) for v in self.index[int(example_id)])
    r = self.records[ri]
    if self.task[example_id] == TASK_VQA and r.get("human_answers") and r["human_answers"][j]:
      return list(r["human_answers"][j])  # several human answers: the official VQA accuracy scores them
    if self.task[example_id] == TASK_VQA or TASK_NAMES[self.task[example_id]] in GROUNDING_TASKS:
      return r["answers"][j]  # grounding: with its boxes in markup (exact coordinates)
    if self.task[example_id] == TASK_AV_MATCH:
      return av_lib.answer(ri, self.av_partner[ri])
    return list(r["captions"])

  def prompt_text(self, example_id: int) -> str:
    """The text prompt the model reads (for spoken VQA the fixed prompt, not the question)."""
    ri, j = (int(v) for v in self.index[int(example_id)])
    if TASK_NAMES[self.task[example_id]] in GROUNDING_TASKS:
      return self.records[ri]["questions"][j]
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
      "dataset has no spoken questions: set config.data.spoken_questions=True as well."
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


def truncate_targets(example: dict, length: int) -> dict:
  """``example`` with its target arrays cut to ``length`` (a batch of short answers need not carry
  the longest caption's padding)."""
  return example | {k: example[k][:length] for k in ("target_in", "target_out", "target_mask")}
