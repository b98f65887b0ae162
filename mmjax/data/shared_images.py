"""Several questions per image: train batches in which G = config.data.questions_per_image questions
share one image, so that the model encodes each image once for all of them, and, with
config.data.captions_with_questions, once for the image's caption too.

A batch is its images and the text streams that read them. A text stream is prompts and their
teacher-forced targets: the question stream (the batch's own rows: prompt, prompt_len, target_in,
target_out, target_mask) and the caption stream (the same fields under the keys caption_prompt,
caption_prompt_len, caption_in, caption_out, caption_mask: mmjax.data.config.CAPTION_FIELDS). The
model (mmjax.models.vlm: TEXT_STREAMS, stream_keys) encodes a batch's images once and decodes every
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
"""

from __future__ import annotations

import functools

import grain
import numpy as np

from mmjax.data import config as config_lib
from mmjax.data.examples import TASK_CAPTION, TASK_VQA, SplitData, truncate_targets


class ImageGrouping:
  """How the train batches of `data` share their images (see the module doc): built from the
  config, it checks the settings (errors name the config keys) and makes the grouped VQA dataset
  and the caption stream."""

  def __init__(self, config, data: SplitData, tasks, media: tuple[str, ...], local_batch: int, process_count: int):
    self.data = data
    self.per_image = config_lib.questions_per_image(config)
    # Captions ride along with the questions only when both tasks train and there are questions.
    self.captions = (
      config_lib.captions_with_questions(config)
      and (tasks is None or {"vqa", "caption"} <= set(tasks))
      and bool((data.task == TASK_VQA).any())
    )
    if self.per_image > 1 and media:
      raise ValueError(
        f"config.data.questions_per_image={self.per_image} groups questions about one image, but this "
        f"dataset's examples also carry {'/'.join(media)} of their own; set it to 1."
      )
    if self.per_image > 1 and local_batch % self.per_image:
      raise ValueError(
        f"config.batch_size={config.batch_size} over {process_count} processes gives {local_batch} rows per "
        f"process, not a multiple of config.data.questions_per_image={self.per_image}."
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
    return (
      grain.MapDataset.range(len(groups))
      .shuffle(seed=seed)
      .repeat()
      .batch(global_batch // self.per_image, drop_remainder=True)
      .random_map(load, seed=seed)
    )

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

  def caption_stream(self, ids, weight: float) -> dict:
    """The caption stream (CAPTION_FIELDS batch keys) of caption examples `ids` (-1: an empty
    caption), targets cut to the longest caption, the mask scaled by `weight`."""
    rows = [truncate_targets(self.data.example(int(i), media=False), self.caption_length) for i in ids]
    out = {key: np.stack([r[field] for r in rows]) for key, field in config_lib.CAPTION_FIELDS.items()}
    out["caption_mask"] = out["caption_mask"] * np.float32(weight)
    return out


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
