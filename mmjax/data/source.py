"""What the input pipeline asks of a dataset: `config.data.source` names one (mmjax.registry,
floor "datasets"), so a new dataset is a builder plus a DatasetSource, and the core knows none of
its vocabulary, question templates or labels."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class DatasetSource:
  """A dataset's hooks. `cfg` below is the dataset's TFDS builder config (a RecordConfig).

  builder_config(config.data) -> cfg: known without building anything (the media it carries, its
      question types, the name of its prepared directory).
  prepare(cfg, data_dir) -> the TFDS builder, built first if missing.
  vocabulary_texts(cfg) -> texts the tokenizer also trains on (e.g. every word of a template
      vocabulary, so no test word falls back to bytes).
  zero_shot_trials(cfg, captions) -> (prompts, trial_image, candidates, labels) for a contrastive
      model's zero-shot classification of the images with these captions, or None: the dataset
      has no such labels and the metric is skipped.
  question_template(question) -> the template a question was made from, for per-template
      accuracy; None when the dataset has no templates.
  image_scorer(cfg, prompts, images) -> {metric: value} scoring generated images (uint8
      [N, H, W, 3]) against the prompts (texts) they were generated from, e.g. whether "a dog left
      of a cat" shows both, in that order; None: the dataset cannot score images and a
      text-to-image evaluation reports no such metrics. It raises ValueError on a prompt it
      cannot read (a silent {} would look like a model that scores nothing).
  """

  builder_config: Callable[[Any], Any]
  prepare: Callable[[Any, str], Any]
  vocabulary_texts: Callable[[Any], list[str]] = lambda cfg: []
  zero_shot_trials: Callable[[Any, list[str]], Any] | None = None
  question_template: Callable[[str], str] | None = None
  image_scorer: Callable[[Any, list[str], Any], dict] | None = None
