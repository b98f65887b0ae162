"""The input pipeline behind one object: ``Data(config)`` is what the trainer, evaluator and sampler
ask of a config's data.

Where its parts live: prepare.py builds the dataset and the tokenizer (the config keys it reads are
listed there), examples.py makes a split's examples and their arrays, batching.py batches them
(train stream and eval batches), shared_images.py lays out batches whose questions share an image.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmjax.data import batching, prepare
from mmjax.data.examples import SPLITS, TASK_NAMES, SplitData, question_types


class Data:
  """What the trainer, evaluator and sampler need from a prepared dataset, behind one object.

  data = Data(config[, tokenizer_path]); data.tokenizer; data.train_iterator(...) is a grain
  iterator whose get_state()/set_state() checkpoint the input position; data.eval_batches(...)
  yields padded batches with a `valid` mask.
  """

  def __init__(self, config, tokenizer_path: str | None = None):
    self.config = config
    self.source = prepare.source(config)
    self.builder = prepare.prepare_builder(config)
    bins = int(prepare.data_config(config).location_bins)
    self.tokenizer = (
      prepare.open_tokenizer(tokenizer_path, bins) if tokenizer_path else prepare.load_tokenizer(config, self.builder)
    )
    self._splits: dict[str, SplitData] = {}

  def split(self, name: str) -> SplitData:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}.")
    if name not in self._splits:
      self._splits[name] = prepare.load_split(self.config, name, self.tokenizer, self.builder)
    return self._splits[name]

  def train_iterator(self, process_index: int = 0, process_count: int = 1, tasks: Sequence[str] | None = None):
    """Endless shuffled batches of this process's rows of the global train batch
    (batching.train_batches): tasks are the TASK_NAMES to train on (None: every task of the split);
    with config.data.questions_per_image > 1 the batches share their images (shared_images.py)."""
    return batching.train_batches(self.config, self.split("train"), process_index, process_count, tasks)

  def eval_batches(
    self, split: str, batch_size: int, max_examples: int = 0, process_index: int = 0, process_count: int = 1
  ):
    """Batches of `split` (its first `max_examples` examples when > 0), every batch full size:
    padding rows have valid=False. Every process yields the same number of batches."""
    yield from batching.eval_batches(self.split(split), batch_size, max_examples, process_index, process_count)

  def references(self, split: str, example_id: int) -> list[str]:
    refs = self.split(split).references(example_id)
    return [refs] if isinstance(refs, str) else list(refs)

  def image(self, split: str, example_id: int) -> np.ndarray:
    return self.split(split).example(example_id)["image"]

  @property
  def media(self) -> tuple[str, ...]:
    """The media the batches carry: "audio" (batch keys audio, audio_len) and/or "video"."""
    return prepare.media_of(self.builder.builder_config)

  @staticmethod
  def task_name(task: int) -> str:
    return TASK_NAMES[task]

  def qtype_name(self, qtype: int) -> str:
    return question_types(self.builder.builder_config)[qtype]
