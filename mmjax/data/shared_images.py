"""Several questions per image: train batches in which G = config.data.questions_per_image questions
share one image, so that the model encodes each image once for all of them, and, with
config.data.captions_with_questions, once for the image's caption too.

A batch is its images and the text streams that read them. A text stream is prompts and their
teacher-forced targets: the question stream (the batch's own rows: prompt, prompt_len, target_in,
target_out, target_mask) and the caption stream (the same fields under the keys caption_prompt,
caption_prompt_len, caption_in, caption_out, caption_mask: mmjax.data.config.CAPTION_FIELDS). The
model (mmjax.models.vlm: text_streams, stream_keys) encodes a batch's images once and decodes every
stream the batch carries off that one encoding, summing their losses; a stream's rows are a multiple
of the images, G consecutive rows reading one image.

With B = config.batch_size rows per global batch (a process holds B / N of them, whole images):

  VQA batch (G > 1)
    image                               [B/G, H, W, 3]  one row per image
    question stream                     [B, ...]  rows i*G .. i*G+G-1 ask about image i: G of its
                                                  questions drawn without repeats (cycled when it
                                                  has fewer), targets cut to the longest answer
    task, qtype, example_id, valid      [B]       of the question rows
    caption stream (captions_with_questions)
                                        [B/G, ...] row i: a caption of image i (drawn at random where
                                                  it has several), its mask scaled by
                                                  task_weights.caption; an image without a caption
                                                  gets the padding example (mask 0)
  caption and matching batches: one example per image, B/G rows for every key (about as cheap as a
    VQA batch). With captions_with_questions they carry an empty caption stream (mask 0), so that
    every train batch has the same keys, and caption batches hold only the images without
    questions: the others' captions come with their questions.

G = 1 (the default) and no captions_with_questions: every batch is B examples, one image each.

Several tasks per image (config.data.examples_per_image = {task: n_task}, some n > 0; with
M = the sum of the counts, every train batch is of this kind):

  image                                 [B/M, H, W, 3]  one row per image
  the first counted task's stream (in TASK_NAMES order) as the batch's own rows
                                        [B/M * n, ...]  with task, qtype, example_id, valid
  every other counted task's stream under the keys "<task>_prompt", "<task>_prompt_len",
    "<task>_in", "<task>_out", "<task>_mask" (config.stream_fields)
                                        [B/M * n_task, ...]
  Rows i*n .. i*n+n-1 of a stream are examples of image i: n of them drawn without repeats (cycled
  when it has fewer, the padding example with mask 0 when it has none), targets cut to the task's
  longest, the mask scaled by task_weights[task]. The images are the records with an example of a
  counted task, shuffled and repeated; no task has batches of its own.
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from mmjax.data import config as config_lib
from mmjax.data.examples import TASK_CAPTION, TASK_NAMES, TASK_VQA, SplitData, truncate_targets


class ImageGrouping:
  """How the train batches of `data` share their images (see the module doc): built from the
  config, it checks the settings (errors name the config keys) and makes the grouped VQA dataset
  and the caption stream."""

  def __init__(self, config, data: SplitData, tasks, media: tuple[str, ...], local_batch: int, process_count: int):
    self.data = data
    self.tasks = tasks  # the TASK_NAMES that train (None: every task of the split)
    # Several tasks per image: {task index: examples per image} of the counted tasks that train.
    counts = config_lib.examples_per_image(config)
    self.streams = {TASK_NAMES.index(t): n for t, n in counts.items() if tasks is None or t in tasks}
    if counts and not self.streams:
      raise ValueError(f"config.data.examples_per_image {counts} counts none of the tasks {tuple(tasks)} that train.")
    self.per_image = sum(self.streams.values()) if self.streams else config_lib.questions_per_image(config)
    # Captions ride along with the questions only when both tasks train and there are questions.
    self.captions = (
      config_lib.captions_with_questions(config)
      and (tasks is None or {"vqa", "caption"} <= set(tasks))
      and bool((data.task == TASK_VQA).any())
    )
    if self.per_image > 1 and media:
      raise ValueError(
        f"{'config.data.examples_per_image' if self.streams else 'config.data.questions_per_image'}="
        f"{self.per_image} groups examples of one image, but this dataset's examples also carry "
        f"{'/'.join(media)} of their own; group none (questions_per_image=1, no examples_per_image)."
      )
    if self.per_image > 1 and local_batch % self.per_image:
      what = "config.data.examples_per_image's sum" if self.streams else "config.data.questions_per_image"
      raise ValueError(
        f"config.batch_size={config.batch_size} over {process_count} processes gives {local_batch} rows per "
        f"process, not a multiple of {what}={self.per_image}."
      )
    self.caption_length = data.target_length(TASK_CAPTION) if self.captions else 0
    self._with_questions = set(data.index[data.task == TASK_VQA, 0].tolist()) if self.captions else set()

  def images(self, rows: slice) -> slice:
    """This process's rows of a B/G-row batch (images, or examples of one image each), from its
    rows `rows` of the B-row batch."""
    return slice(rows.start // self.per_image, rows.stop // self.per_image)

  def groups_questions(self, task: int) -> bool:
    """Whether `task`'s batches are images with G questions each (else one example per image)."""
    return task == TASK_VQA and self.per_image > 1

  def task_ids(self, task: int, ids: np.ndarray) -> np.ndarray:
    """The examples of `task` its own batches train on: with captions riding along, caption
    batches keep only the images that have no questions."""
    if self.captions and task == TASK_CAPTION:
      return np.asarray([i for i in ids if int(self.data.index[i, 0]) not in self._with_questions], np.int64)
    return ids

  def question_dataset(self, ids: np.ndarray, weights: dict, seed: int, global_batch: int, rows: slice):
    """Endless shuffled batches of images with G of their questions each (VQA examples `ids`), this
    process's `rows` of each global batch; with captions riding along, their caption stream."""
    groups = _image_groups(self.data, ids)
    captions = _captions_of_groups(self.data, groups) if self.captions else None
    load = functools.partial(
      self._load_groups,
      groups=groups,
      rows=self.images(rows),
      length=self.data.target_length(TASK_VQA),
      captions=captions,
      caption_weight=float(weights["caption"]),
    )
    return _image_batches(len(groups), global_batch // self.per_image, load, seed)

  def _load_groups(self, groups_batch, rng: np.random.Generator, groups, rows, length, captions, caption_weight):
    """A global batch of image groups -> this process's rows: one image per group and `per_image`
    of its questions (a random draw without repeats; cycled when the image has fewer), and with
    `captions` (caption example ids per group) each image's caption (one drawn at random where it
    has several)."""
    data = self.data
    # Every process draws for the whole global batch, so N processes load exactly the rows of one.
    picks = [np.resize(rng.permutation(groups[int(g)]), self.per_image) for g in np.asarray(groups_batch)]
    chosen = (
      [int(rng.choice(captions[int(g)])) if len(captions[int(g)]) else -1 for g in np.asarray(groups_batch)]
      if captions is not None
      else None
    )
    images, examples = [], []
    for ids in picks[rows]:
      images.append(np.asarray(data.image_of(int(ids[0])), np.uint8))  # decoded once per group
      examples.extend(truncate_targets(data.example(int(i), media=False), length) for i in ids)
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["image"] = np.stack(images)
    if captions is not None:
      # An image without a caption gets an empty one (id -1: the padding example, mask 0).
      batch |= self.caption_stream(chosen[rows], caption_weight)
    return batch

  def stream_dataset(self, weights: dict, seed: int, global_batch: int, rows: slice):
    """Endless shuffled batches of images with examples_per_image[task] of their examples of every
    counted task, one text stream per task (the module doc), this process's `rows` of each global
    batch. Every task of the split that trains must be counted (an error names the key)."""
    data = self.data
    # A task of the split that trains (self.tasks) but is left out would silently never train.
    present = {TASK_NAMES[int(t)] for t in np.unique(data.task)} - {TASK_NAMES[t] for t in self.streams}
    missing = sorted(t for t in present if (self.tasks is None or t in self.tasks) and float(weights[t]) > 0)
    if missing:
      raise ValueError(
        f"the train split of {data.builder.name} has {missing} examples but config.data.examples_per_image "
        f"counts only {[TASK_NAMES[t] for t in self.streams]}: give them a count, or task_weights 0."
      )
    ids = np.flatnonzero(np.isin(data.task, list(self.streams)))
    groups = [{t: g[data.task[g] == t] for t in self.streams} for g in _image_groups(data, ids)]
    load = functools.partial(
      self._load_streams,
      groups=groups,
      rows=self.images(rows),
      lengths={t: data.target_length(t) for t in self.streams},
      weights={t: float(weights[TASK_NAMES[t]]) for t in self.streams},
    )
    return _image_batches(len(groups), global_batch // self.per_image, load, seed)

  def _load_streams(self, groups_batch, rng: np.random.Generator, groups, rows, lengths, weights):
    """A global batch of images (indices into `groups`: {task: its example ids} per image) -> this
    process's rows: each image and its text streams (the module doc)."""
    data = self.data
    # Every process draws for the whole global batch, so N processes load exactly the rows of one.
    picks = [
      {t: np.resize(rng.permutation(g[t]), n) if len(g[t]) else np.full(n, -1) for t, n in self.streams.items()}
      for g in (groups[int(i)] for i in np.asarray(groups_batch))
    ]
    images, streams = [], {t: [] for t in self.streams}
    for pick in picks[rows]:
      first = next(int(i) for ids in pick.values() for i in ids if i >= 0)
      images.append(np.asarray(data.image_of(first), np.uint8))  # decoded once per image
      for t, ids in pick.items():
        streams[t].extend(truncate_targets(_text(data.example(int(i), media=False)), lengths[t]) for i in ids)
    batch = {"image": np.stack(images)}
    for k, (t, examples) in enumerate(streams.items()):
      arrays = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
      arrays["target_mask"] = arrays["target_mask"] * np.float32(weights[t])
      # The first task is the batch's own rows (with their ids); the others ride under their names.
      batch |= arrays if k == 0 else {key: arrays[f] for key, f in config_lib.stream_fields(TASK_NAMES[t]).items()}
    return batch

  def caption_stream(self, ids, weight: float) -> dict:
    """The caption stream (CAPTION_FIELDS batch keys) of caption examples `ids` (-1: an empty
    caption), targets cut to the longest caption, the mask scaled by `weight`."""
    rows = [truncate_targets(self.data.example(int(i), media=False), self.caption_length) for i in ids]
    out = {key: np.stack([r[field] for r in rows]) for key, field in config_lib.CAPTION_FIELDS.items()}
    out["caption_mask"] = out["caption_mask"] * np.float32(weight)
    return out


def _image_batches(n_images: int, images_per_batch: int, load, seed: int):
  """Endless shuffled batches of image indices [0, n_images), each made a batch by
  load(indices, rng) with its own deterministic rng."""
  return (
    grain.MapDataset.range(n_images)
    .shuffle(seed=seed)
    .repeat()
    .batch(images_per_batch, drop_remainder=True)
    .random_map(load, seed=seed)
  )


def _text(example: dict) -> dict:
  """An example's text entries (the padding example also carries an image)."""
  return {k: v for k, v in example.items() if k != "image"}


def _image_groups(data: SplitData, ids: np.ndarray) -> list[np.ndarray]:
  """The example ids of `ids` grouped by the record (image) they ask about, records in order."""
  records = data.index[ids, 0]
  order = np.argsort(records, kind="stable")
  bounds = np.flatnonzero(np.diff(records[order])) + 1
  return np.split(ids[order], bounds)


def _captions_of_groups(data: SplitData, groups: list[np.ndarray]) -> list[np.ndarray]:
  """The caption example ids of each group's image (empty for an image without a caption)."""
  by_record: dict[int, list[int]] = {}
  for e in np.flatnonzero(data.task == TASK_CAPTION):
    by_record.setdefault(int(data.index[e, 0]), []).append(int(e))
  return [np.asarray(by_record.get(int(data.index[g[0], 0]), []), np.int64) for g in groups]
