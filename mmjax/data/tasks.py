"""The example kinds (tasks) of the input pipeline, shared by its config defaults (task weights) and
the examples (examples.py): each example's ``task`` is an index into ``TASK_NAMES``."""

from __future__ import annotations

from mmjax.location_tokens import Box, LocationTokens

# Grounding tasks (PaliGemma / Kosmos-2), each scored by its own metric (evaluate/grounding.py): a
# referring expression -> its box; detection -> every box of the prompt's labels; a caption whose
# object phrases carry boxes; a VQA answer that names an object with its box. A record's question
# whose type is one of these is an example of that task (examples.py). The first two answer in
# detection text, the others in grounded phrases (mmjax.location_tokens).
DETECTION_TASKS = ("refer", "detect")
PHRASE_TASKS = ("grounded_caption", "grounded_vqa")
GROUNDING_TASKS = DETECTION_TASKS + PHRASE_TASKS
# Example kinds every dataset has besides its own question types (qtype indices: examples.question_types).
TASK_NAMES = ("vqa", "caption", "av_match") + GROUNDING_TASKS
TASK_VQA, TASK_CAPTION, TASK_AV_MATCH = 0, 1, 2


def grounded_pairs(task: str, text: str, locations: LocationTokens) -> list[tuple[str, Box]] | None:
  """The (label or phrase, box) pairs of a grounding task's text, a model's location tokens or a
  reference's markup: `locations.parse` for detection tasks, `locations.phrases` for phrase tasks;
  None for a task that is not grounding."""
  if task in DETECTION_TASKS:
    return locations.parse(text)
  if task in PHRASE_TASKS:
    return locations.phrases(text)
  return None
