"""The example kinds (tasks) of the input pipeline, shared by its config defaults (task weights) and
the examples (examples.py): each example's ``task`` is an index into ``TASK_NAMES``."""

# Grounding tasks (PaliGemma / Kosmos-2), each scored by its own metric (evaluate/evaluator.py): a
# referring expression -> its box; detection -> every box of the prompt's labels; a caption whose
# object phrases carry boxes; a VQA answer that names an object with its box. A record's question
# whose type is one of these is an example of that task (examples.py).
GROUNDING_TASKS = ("refer", "detect", "grounded_caption", "grounded_vqa")
# Example kinds every dataset has besides its own question types (qtype indices: examples.question_types).
TASK_NAMES = ("vqa", "caption", "av_match") + GROUNDING_TASKS
TASK_VQA, TASK_CAPTION, TASK_AV_MATCH = 0, 1, 2
