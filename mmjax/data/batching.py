"""Batches of a split's examples (examples.py): the endless, deterministic train stream and the padded
eval batches. Top-level config keys read: ``config.seed`` (train shuffle seed) and
``config.batch_size`` (global batch); data keys: ``task_weights``, ``questions_per_image`` and
``captions_with_questions`` (shared_images.py).

A batch is a dict of numpy arrays, an example's arrays (examples.py) stacked along a first batch
axis. Train batches hold one task each, their targets cut to the longest target of that task; with
questions_per_image > 1 a VQA batch shares its images between questions (shared_images.py gives the
layout, and the caption stream that captions_with_questions adds); with examples_per_image every
batch holds images with examples of several tasks, one text stream per task (shared_images.py).

Train: every process shuffles the whole split identically and batches example ids at the global
batch size; process i then loads only rows [i*B/N, (i+1)*B/N) of each global batch. N processes
together therefore produce exactly the batches of one process, whatever N (and resume at the same
position); ``iter(...)``'s get_state()/set_state() give the exact position in the stream.
Eval: neither shuffled nor repeated; every process gets the same number of batches, the tail padded
with ``valid=False`` examples.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import grain
import numpy as np

from mmjax.data.examples import TASK_NAMES, SplitData, truncate_targets
from mmjax.data.prepare import data_config, media_of
from mmjax.data.shared_images import ImageGrouping


def shard_ids(n: int, process_index: int, process_count: int) -> np.ndarray:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  return np.arange(n)[process_index::process_count]


def task_mixing_weights(config) -> dict[str, float]:
  """config.data.task_weights completed with 1.0 for the tasks it leaves out; a clear error for an
  unknown task or a weight that is negative or not a number."""
  given = data_config(config).task_weights or {}
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


def train_batches(
  config, data: SplitData, process_index: int = 0, process_count: int = 1, tasks: Sequence[str] | None = None
):
  """Endless shuffled batches of this process's rows of the global train batch (see the module doc).

  tasks: the TASK_NAMES whose examples to train on (None: every task of the split), e.g.
  ("caption",) for the (image, caption) pairs a contrastive model trains on.

  VQA, captioning and matching examples are batched separately and the batches interleaved in
  proportion to the number of examples of each task times its config.data.task_weights entry
  (default 1; 0 drops the task) by grain's deterministic mix, so a VQA batch carries targets only
  as long as the longest answer instead of the longest caption: most steps then cost a fraction of
  a caption step. With config.data.questions_per_image = G > 1 every batch holds batch_size / G
  images (shared_images.py). With config.data.examples_per_image every batch is images with their
  examples of every counted task, one text stream per task (shared_images.py).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  global_batch = int(config.batch_size)
  if global_batch % process_count:
    raise ValueError(f"batch_size={global_batch} is not divisible by the {process_count} processes.")
  local = global_batch // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  unknown = set(tasks or ()) - set(TASK_NAMES)
  if unknown:
    raise ValueError(f"unknown tasks {sorted(unknown)}; expected some of {TASK_NAMES}.")
  weights = task_mixing_weights(config)
  grouping = ImageGrouping(config, data, tasks, media_of(data.builder.builder_config), local, process_count)
  if grouping.streams:  # several tasks per image: one kind of batch (shared_images.py)
    return iter(grouping.stream_dataset(weights, int(config.seed) * 2, global_batch, rows))
  streams, shares = [], []
  for task in range(len(TASK_NAMES)):
    if tasks is not None and TASK_NAMES[task] not in tasks:
      continue
    ids = grouping.task_ids(task, np.flatnonzero(data.task == task))
    if len(ids) == 0 or weights[TASK_NAMES[task]] == 0:
      continue
    seed = int(config.seed) * 2 + task
    if grouping.groups_questions(task):
      ds = grouping.question_dataset(ids, weights, seed, global_batch, rows)
    else:
      # One example per image; with shared images every batch holds the same number of images, so
      # such a batch is batch_size / questions_per_image examples, about as cheap as a VQA batch.
      load = functools.partial(
        _load_rows, data=data, rows=grouping.images(rows), length=data.target_length(task), grouping=grouping
      )
      ds = (
        grain.MapDataset.source(ids.tolist())
        .shuffle(seed=seed)
        .repeat()
        .batch(global_batch // grouping.per_image, drop_remainder=True)
        .map(load)
      )
    streams.append(ds)
    shares.append(len(ids) * weights[TASK_NAMES[task]])
  if not streams:
    what = "" if tasks is None else f" of the tasks {tuple(tasks)}"
    raise ValueError(f"the train split of {data.builder.name} has no examples{what}.")
  return iter(streams[0] if len(streams) == 1 else grain.MapDataset.mix(streams, shares))


def _load_rows(ids, data: SplitData, rows: slice, length: int, grouping: ImageGrouping) -> dict:
  """This process's rows of a global batch of example ids -> a stacked batch (targets cut to
  `length`). With captions riding along with the questions: an empty caption stream (mask 0), so
  that every train batch has the same keys."""
  examples = [truncate_targets(data.example(int(i)), length) for i in np.asarray(ids)[rows]]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  if grouping.captions:
    batch |= grouping.caption_stream([-1] * len(examples), 0.0)
  return batch


def eval_batches(
  data: SplitData, batch_size: int, max_examples: int = 0, process_index: int = 0, process_count: int = 1
):
  """Batches of `data` (its first `max_examples` examples when > 0), this process's
  batch_size / process_count rows each, every batch full size: padding rows have valid=False.
  Every process yields the same number of batches."""
  n = len(data) if max_examples <= 0 else min(max_examples, len(data))
  if n == 0:
    raise ValueError(f"split {data.split!r} of {data.builder.name} has no examples.")
  per_process = batch_size // process_count
  ids = shard_ids(n, process_index, process_count)
  # VQA first, then captions: a batch of short answers stops decoding after a few tokens.
  ids = ids[np.argsort(data.task[ids], kind="stable")]
  padded = max(1, math.ceil(math.ceil(n / process_count) / per_process)) * per_process
  ids = np.concatenate([ids, -np.ones(padded - len(ids), np.int64)])
  for start in range(0, padded, per_process):
    rows = [data.example(i) for i in ids[start : start + per_process]]
    yield {k: np.stack([r[k] for r in rows]) for k in rows[0]}
