"""Procedural "shapes" scenes (Sort-of-CLEVR style): images, captions and question/answer pairs.

Everything is generated with numpy from a seed; nothing is downloaded.

A scene holds six objects, one of each colour in ``COLORS`` (so "the red object" is always unique),
with a shape drawn from the first ``num_shapes`` (2 or 3) entries of ``SHAPES``. Objects are about
``image_size / 7`` pixels wide, at random non-overlapping positions, drawn on a black background.
Geometry conventions: an object sits at integer pixel ``(x, y)`` (column, row); its continuous centre
is ``(x + 0.5, y + 0.5)``. "On the left" means the centre is in the left image half (likewise
right/top/bottom; with the +0.5 convention no centre lies exactly on a half line). The coarse 3x3
position words split the image into thirds of the continuous centre.

Captions list all six objects in the canonical colour order, e.g.
``"a red circle at the top left, a green square at the center, ..."``.

Question templates (answers are single lowercase words):

* attribute: ``what shape is the <color> object?`` / ``what color is the <shape> at the <pos>?``
  (the latter only for a (shape, position word) pair that is unique in the scene);
* spatial: ``is the <color> object on the left|right|top|bottom?`` -> yes/no;
* relational: ``what shape is the object closest to the <color> object?``,
  ``what shape is the object furthest from the <color> object?``,
  ``how many objects have the same shape as the <color> object?`` (the count includes the object
  itself, answered one..six), ``what color is the object closest to the <color> object?``.
  Questions whose answer would depend on a distance tie are never asked.

Training-only (auxiliary) questions, generated for the train split alone and never scored
(``AUXILIARY_KINDS``; off unless asked for):

* side: ``is the <color> object on the left or the right?`` -> left/right (likewise top/bottom);
* spatial_lean: the spatial templates asking only about the left or the top;
* count: ``how many objects are <shape>s?`` -> one..six;
* position: ``what color is the object at the <pos>?`` (a position word that holds one object).

Grounding questions (PaliGemma / Kosmos-2 style; ``GROUNDING_TASKS``, off unless asked for, in
every split since they are scored). Their question type is the task's name, and boxes are written in
the library's markup ``<box>y0 x0 y1 x1</box>`` (mmjax.location_tokens) with the exact box of the
object's pixels (``object_box``):

* refer: ``detect the <color> <shape>`` / ``detect the <shape> at the <pos>`` (the latter only for
  a unique (shape, position word) pair) -> the object's box and the expression (PaliGemma's
  referring output, ``<box>..</box> the red circle``: the form of a one-object detection);
* detect: ``detect <shape> ; <shape>`` (a random non-empty subset of the shape kinds, in random
  order) -> ``detection_text`` of the objects of those shapes ("" when there are none);
* grounded_caption: ``describe the image with boxes.`` -> the caption with each object phrase
  grounded, ``<phrase>a red circle</phrase><box>..</box> at the top left, ...`` (at most one a scene);
* grounded_vqa: ``which object is closest to|furthest from the <color> object?`` -> the object's
  phrase with its box, ``<phrase>a green square</phrase><box>..</box>`` (never asked on a tie).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import numpy as np

from mmjax.data.examples import GROUNDED_CAPTION_PROMPT
from mmjax.data.tasks import GROUNDING_TASKS
from mmjax.location_tokens import Box, detect_prompt, detection_text, phrase_text

COLORS = ("red", "green", "blue", "orange", "gray", "yellow")
COLOR_RGB = {
  "red": (230, 25, 25),
  "green": (30, 200, 40),
  "blue": (30, 70, 240),
  "orange": (255, 140, 0),
  "gray": (140, 140, 140),
  "yellow": (250, 235, 30),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (0, 0, 0)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
POSITION_WORDS = (
  ("top left", "top", "top right"),
  ("left", "center", "right"),
  ("bottom left", "bottom", "bottom right"),
)
QUESTION_KINDS = ("attribute", "spatial", "relational")
DEFAULT_QUESTIONS_PER_TYPE = {"attribute": 2, "spatial": 2, "relational": 4}

ATTRIBUTE_TEMPLATES = (
  "what shape is the {color} object?",
  "what color is the {shape} at the {pos}?",
)
SPATIAL_TEMPLATES = (
  "is the {color} object on the left?",
  "is the {color} object on the right?",
  "is the {color} object on the top?",
  "is the {color} object on the bottom?",
)
RELATIONAL_TEMPLATES = (
  "what shape is the object closest to the {color} object?",
  "what shape is the object furthest from the {color} object?",
  "how many objects have the same shape as the {color} object?",
  "what color is the object closest to the {color} object?",
)

# Why training-only questions: a balanced yes/no spatial question is an XOR of the side the object
# is on and the side the question asks about. Neither alone predicts the answer, so the answer's
# loss gives no gradient toward reading where the object is, and models sit at chance for long
# (README, "Measured results"). "side" questions name the object's side as the answer, and
# "spatial_lean" questions ask only "left?" / "top?", so that on them the object's side alone
# predicts the answer; once a model reads the side, the XOR with the asked side follows. "count"
# questions are the counting half of "how many objects have the same shape as the <color> object?".
# "position" questions are the position half of "what color is the <shape> at the <pos>?": there,
# matching the shape alone already gets about half of the answers right, a plateau on which finding
# the object by its position word gets little gradient. New kinds go at the end (question type ids).
AUXILIARY_KINDS = ("side", "spatial_lean", "count", "position")
SIDE_TEMPLATES = (
  ("is the {color} object on the left or the right?", ("left", "right")),
  ("is the {color} object on the top or the bottom?", ("top", "bottom")),
)
COUNT_TEMPLATE = "how many objects are {shape}s?"
POSITION_TEMPLATE = "what color is the object at the {pos}?"

# Grounding (GROUNDING_TASKS, after all of the above in a scene): referring expressions, asked as
# detect_prompt([expression]), and the grounded VQA questions (module docstring).
REFER_TEMPLATES = ("the {color} {shape}", "the {shape} at the {pos}")
GROUNDED_VQA_TEMPLATES = (
  "which object is closest to the {color} object?",
  "which object is furthest from the {color} object?",
)


@dataclasses.dataclass(frozen=True)
class SceneObject:
  color: str
  shape: str
  x: int  # column of the centre pixel
  y: int  # row of the centre pixel


@dataclasses.dataclass
class Scene:
  objects: tuple[SceneObject, ...]
  image: np.ndarray  # uint8 [S, S, 3]
  caption: str
  questions: list[str]
  answers: list[str]
  question_types: list[str]
  image_size: int


def object_size(image_size: int) -> int:
  """Object width in pixels (about 1/7 of the image)."""
  return max(5, int(round(image_size / 7)))


def centre_range(image_size: int) -> tuple[int, int]:
  """Inclusive range of object centre coordinates that keeps every object inside the image with
  a 1-pixel background border (shared by the still layouts and the moving ones of video.py)."""
  half = object_size(image_size) // 2
  return half + 1, image_size - half - 2


def position_word(obj: SceneObject, image_size: int) -> str:
  col = min(2, int(3 * (obj.x + 0.5) / image_size))
  row = min(2, int(3 * (obj.y + 0.5) / image_size))
  return POSITION_WORDS[row][col]


def _as_rng(seed) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  return np.random.default_rng(seed)


def _check_args(image_size: int, num_shapes: int):
  if not 32 <= image_size <= 256:
    raise ValueError(f"image_size must be in [32, 256] (64-128 recommended), got {image_size}")
  if num_shapes not in (2, 3):
    raise ValueError(f"num_shapes must be 2 or 3, got {num_shapes}")


def place_centres(rng: np.random.Generator, n: int, image_size: int) -> list[tuple[int, int]] | None:
  """Centre pixels (x, y) of n objects whose boxes are >= 1 background pixel apart, or None when a
  draw gets stuck (each object tries 200 positions; the caller starts over)."""
  half = object_size(image_size) // 2
  lo, hi = centre_range(image_size)
  min_sep = 2 * half + 2  # boxes [x-half, x+half] separated by >= 1 background pixel
  placed: list[tuple[int, int]] = []
  for _ in range(n):
    for _ in range(200):
      x, y = (int(v) for v in rng.integers(lo, hi + 1, size=2))
      if all(max(abs(x - px), abs(y - py)) >= min_sep for px, py in placed):
        placed.append((x, y))
        break
    else:
      return None
  return placed


def sample_objects(seed, image_size: int = 64, num_shapes: int = 3) -> tuple[SceneObject, ...]:
  """Samples the six objects (one per colour, in COLORS order) with non-overlapping boxes."""
  _check_args(image_size, num_shapes)
  rng = _as_rng(seed)
  shapes = SHAPES[:num_shapes]
  placed = None
  while placed is None:
    placed = place_centres(rng, len(COLORS), image_size)
  shape_idx = rng.integers(0, num_shapes, size=len(COLORS))
  return tuple(SceneObject(color=c, shape=shapes[int(s)], x=x, y=y) for c, s, (x, y) in zip(COLORS, shape_idx, placed))


@functools.lru_cache(maxsize=8)
def _grid(image_size: int):
  yy, xx = np.mgrid[0:image_size, 0:image_size]
  return yy, xx


def object_mask(obj: SceneObject, image_size: int) -> np.ndarray:
  """Boolean [S, S] mask of the pixels covered by ``obj``."""
  yy, xx = _grid(image_size)
  r = object_size(image_size) / 2
  dx, dy = xx - obj.x, yy - obj.y
  if obj.shape == "circle":
    return dx * dx + dy * dy <= r * r
  if obj.shape == "square":
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)
  if obj.shape == "triangle":  # apex up
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
  raise ValueError(f"unknown shape {obj.shape!r}")


def render(objects: Sequence[SceneObject], image_size: int) -> np.ndarray:
  img = np.empty((image_size, image_size, 3), np.uint8)
  img[...] = BACKGROUND
  for obj in objects:
    img[object_mask(obj, image_size)] = COLOR_RGB[obj.color]
  return img


def object_phrase(color: str, shape: str) -> str:
  """ "a red circle", "an orange square": how captions name an object."""
  return f"{'an' if color[0] in 'aeiou' else 'a'} {color} {shape}"


def object_box(obj: SceneObject, image_size: int) -> Box:
  """The normalised box (y0, x0, y1, x1) of the pixels ``obj`` covers, in pixel edges: rows r0..r1
  covered give y0 = r0 / S, y1 = (r1 + 1) / S (columns likewise). Read off ``object_mask``, so it is
  exact for every shape (a triangle's apex row, a circle's single-pixel extremes)."""
  mask = object_mask(obj, image_size)
  rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
  s = float(image_size)
  return (int(rows[0]) / s, int(cols[0]) / s, (int(rows[-1]) + 1) / s, (int(cols[-1]) + 1) / s)


def grounded_phrase(obj: SceneObject, image_size: int) -> str:
  """ "<phrase>a red circle</phrase><box>..</box>": the object's caption phrase with its box."""
  return phrase_text(object_phrase(obj.color, obj.shape), object_box(obj, image_size))


def _describe(objects: Sequence[SceneObject], image_size: int, name) -> str:
  """ "<name> at the <pos>, ..." over the objects in the canonical colour order (``caption``)."""
  by_color = {o.color: o for o in objects}
  return ", ".join(
    f"{name(by_color[c])} at the {position_word(by_color[c], image_size)}" for c in COLORS if c in by_color
  )


def caption(objects: Sequence[SceneObject], image_size: int) -> str:
  return _describe(objects, image_size, lambda o: object_phrase(o.color, o.shape))


def grounded_caption(objects: Sequence[SceneObject], image_size: int) -> str:
  """``caption`` with each object phrase followed by its box (``grounded_phrase``)."""
  return _describe(objects, image_size, lambda o: grounded_phrase(o, image_size))


def caption_objects(text: str) -> list[tuple[str, str]]:
  """The (color, shape) pairs a caption names, in caption order (the inverse of ``caption`` up to
  positions); a part that is not "<a|an> <color> <shape> at the <position>" is an error."""
  out = []
  for part in text.split(", "):
    words = part.split()
    if (
      len(words) < 5
      or words[0] not in ("a", "an")
      or words[1] not in COLORS
      or words[2] not in SHAPES
      or words[3:5] != ["at", "the"]
    ):
      raise ValueError(f"not a shapes caption part: {part!r} (in {text!r}).")
    out.append((words[1], words[2]))
  return out


def _sqdist(a: SceneObject, b: SceneObject) -> int:
  return (a.x - b.x) ** 2 + (a.y - b.y) ** 2


def _extreme(objects, ref: SceneObject, closest: bool):
  """The unique closest/furthest other object, or None on a distance tie."""
  others = sorted((o for o in objects if o is not ref), key=lambda o: _sqdist(o, ref), reverse=not closest)
  if len(others) > 1 and _sqdist(others[0], ref) == _sqdist(others[1], ref):
    return None
  return others[0]


def _ask(kind: str, objects, image_size: int, rng: np.random.Generator):
  """One (question, answer) of ``kind`` or None when the sampled instance is ambiguous."""
  color = COLORS[int(rng.integers(len(COLORS)))]
  ref = next(o for o in objects if o.color == color)
  mid = image_size / 2
  if kind == "attribute":
    t = int(rng.integers(len(ATTRIBUTE_TEMPLATES)))
    if t == 0:
      return ATTRIBUTE_TEMPLATES[0].format(color=color), ref.shape
    keys = [(o.shape, position_word(o, image_size)) for o in objects]
    unique = [o for o, k in zip(objects, keys) if keys.count(k) == 1]
    if not unique:
      return None
    o = unique[int(rng.integers(len(unique)))]
    return ATTRIBUTE_TEMPLATES[1].format(shape=o.shape, pos=position_word(o, image_size)), o.color
  if kind == "spatial":
    t = int(rng.integers(len(SPATIAL_TEMPLATES)))
    cx, cy = ref.x + 0.5, ref.y + 0.5
    truth = (cx < mid, cx > mid, cy < mid, cy > mid)[t]
    return SPATIAL_TEMPLATES[t].format(color=color), "yes" if truth else "no"
  if kind == "side":  # the object's side, as a word
    t = int(rng.integers(len(SIDE_TEMPLATES)))
    template, words = SIDE_TEMPLATES[t]
    return template.format(color=color), words[int((ref.x, ref.y)[t] + 0.5 > mid)]
  if kind == "spatial_lean":  # a spatial question about the left or the top only
    t = int(rng.integers(2))
    truth = (ref.x, ref.y)[t] + 0.5 < mid
    return SPATIAL_TEMPLATES[2 * t].format(color=color), "yes" if truth else "no"
  if kind == "position":  # an object found by its position word alone
    words = [position_word(o, image_size) for o in objects]
    unique = [o for o, w in zip(objects, words) if words.count(w) == 1]
    if not unique:
      return None
    o = unique[int(rng.integers(len(unique)))]
    return POSITION_TEMPLATE.format(pos=position_word(o, image_size)), o.color
  if kind == "count":
    shape = ref.shape  # a shape that is in the scene, drawn through a random object
    return COUNT_TEMPLATE.format(shape=shape), NUMBER_WORDS[sum(o.shape == shape for o in objects)]
  if kind == "relational":
    t = int(rng.integers(len(RELATIONAL_TEMPLATES)))
    q = RELATIONAL_TEMPLATES[t].format(color=color)
    if t == 2:
      return q, NUMBER_WORDS[sum(o.shape == ref.shape for o in objects)]
    other = _extreme(objects, ref, closest=(t != 1))
    if other is None:
      return None
    return q, (other.color if t == 3 else other.shape)
  raise ValueError(f"unknown question kind {kind!r}")


def generate_questions(
  objects, image_size: int, rng: np.random.Generator, questions_per_type=None, auxiliary_per_type=None
):
  """Returns (questions, answers, question_types); no duplicated question within a scene.
  Auxiliary questions (``AUXILIARY_KINDS``) come after the scored ones, which they leave as they
  would be without them."""
  counts = dict(DEFAULT_QUESTIONS_PER_TYPE if questions_per_type is None else questions_per_type)
  unknown = set(counts) - set(QUESTION_KINDS)
  if unknown:
    raise ValueError(f"unknown question types {sorted(unknown)}; expected {QUESTION_KINDS}")
  aux = dict(auxiliary_per_type or {})
  unknown = set(aux) - set(AUXILIARY_KINDS)
  if unknown:
    raise ValueError(f"unknown auxiliary question types {sorted(unknown)}; expected {AUXILIARY_KINDS}")
  counts |= aux
  questions, answers, qtypes = [], [], []
  for kind in QUESTION_KINDS + AUXILIARY_KINDS:
    for _ in range(int(counts.get(kind, 0))):
      for _ in range(50):
        qa = _ask(kind, objects, image_size, rng)
        if qa is not None and qa[0] not in questions:
          questions.append(qa[0])
          answers.append(qa[1])
          qtypes.append(kind)
          break
  return questions, answers, qtypes


def _ground(kind: str, objects, image_size: int, num_shapes: int, rng: np.random.Generator):
  """One grounding (question, answer) of task ``kind`` or None when the sampled instance is
  ambiguous (module docstring)."""
  if kind == "refer":
    if int(rng.integers(len(REFER_TEMPLATES))) == 0:  # one object per colour: always unique
      o = objects[int(rng.integers(len(objects)))]
      expr = REFER_TEMPLATES[0].format(color=o.color, shape=o.shape)
    else:
      keys = [(o.shape, position_word(o, image_size)) for o in objects]
      unique = [o for o, k in zip(objects, keys) if keys.count(k) == 1]
      if not unique:
        return None
      o = unique[int(rng.integers(len(unique)))]
      expr = REFER_TEMPLATES[1].format(shape=o.shape, pos=position_word(o, image_size))
    return detect_prompt([expr]), detection_text([(expr, object_box(o, image_size))])
  if kind == "detect":
    kinds = SHAPES[:num_shapes]
    size = int(rng.integers(1, len(kinds) + 1))
    labels = [kinds[int(i)] for i in rng.permutation(len(kinds))[:size]]
    found = [(o.shape, object_box(o, image_size)) for o in objects]
    return detect_prompt(labels), detection_text(found, labels)
  if kind == "grounded_caption":
    return GROUNDED_CAPTION_PROMPT, grounded_caption(objects, image_size)
  if kind == "grounded_vqa":
    ref = objects[int(rng.integers(len(objects)))]
    t = int(rng.integers(len(GROUNDED_VQA_TEMPLATES)))
    other = _extreme(objects, ref, closest=(t == 0))
    if other is None:
      return None
    return GROUNDED_VQA_TEMPLATES[t].format(color=ref.color), grounded_phrase(other, image_size)
  raise ValueError(f"unknown grounding task {kind!r}")


def generate_grounding(
  objects, image_size: int, num_shapes: int, rng: np.random.Generator, grounding_per_type, asked=()
):
  """Returns (questions, answers, question_types) of the grounding tasks, ``grounding_per_type``
  {task: count} (GROUNDING_TASKS; left out: 0), none repeating a question of ``asked`` or of each
  other. Nothing is drawn from ``rng`` for a count of 0."""
  counts = dict(grounding_per_type or {})
  unknown = set(counts) - set(GROUNDING_TASKS)
  if unknown:
    raise ValueError(f"unknown grounding tasks {sorted(unknown)}; expected {GROUNDING_TASKS}")
  questions, answers, qtypes = [], [], []
  for kind in GROUNDING_TASKS:
    for _ in range(int(counts.get(kind, 0))):
      for _ in range(50):
        qa = _ground(kind, objects, image_size, num_shapes, rng)
        if qa is not None and qa[0] not in questions and qa[0] not in asked:
          questions.append(qa[0])
          answers.append(qa[1])
          qtypes.append(kind)
          break
        if kind == "grounded_caption":  # one prompt per scene: asking again cannot help
          break
  return questions, answers, qtypes


def generate_scene(
  seed,
  image_size: int = 64,
  num_shapes: int = 3,
  questions_per_type=None,
  auxiliary_per_type=None,
  grounding_per_type=None,
) -> Scene:
  """The scene for ``seed`` (an int, a sequence of ints or a numpy Generator). Grounding questions
  (``grounding_per_type``, see ``generate_grounding``) are drawn after all others, so the scene is
  otherwise the one without them."""
  rng = _as_rng(seed)
  objects = sample_objects(rng, image_size, num_shapes)
  qs, ans, qts = generate_questions(objects, image_size, rng, questions_per_type, auxiliary_per_type)
  gq, ga, gt = generate_grounding(objects, image_size, num_shapes, rng, grounding_per_type, asked=qs)
  qs, ans, qts = qs + gq, ans + ga, qts + gt
  return Scene(
    objects=objects,
    image=render(objects, image_size),
    caption=caption(objects, image_size),
    questions=qs,
    answers=ans,
    question_types=qts,
    image_size=image_size,
  )


def question_template(question: str) -> str:
  """The question with its colour, shape and position words replaced by <color>, <shape> and <pos>
  ("what color is the circle at the top left?" -> "what color is the <shape> at the <pos>?"): the
  template it was made from, for per-template accuracy. Other text passes through unchanged, apart
  from those words."""
  if " at the " in question:
    question = question[: question.index(" at the ")] + " at the <pos>" + "?" * question.endswith("?")
  words = [
    "<color>" if w in COLORS else "<shape>" if w.rstrip("s") in SHAPES else w for w in question.rstrip("?").split()
  ]
  return " ".join(words) + "?" * question.endswith("?")


SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def scene_seed(seed: int, split: str, index: int) -> list[int]:
  """The seed of scene ``index`` of ``split``: independent streams per (seed, split, index)."""
  return [int(seed), SPLIT_IDS[split], int(index)]


def vocabulary_texts(num_shapes: int = 3, grounding: bool = False) -> list[str]:
  """Every template word, so a tokenizer can cover the whole template vocabulary; with
  ``grounding`` also the grounding prompts' words and the phrase tags (boxes become location
  tokens, not text). Without it the texts are those of datasets made before grounding, so their
  tokenizers stay the same."""
  words = set(COLORS) | set(SHAPES[:num_shapes]) | set(NUMBER_WORDS) | {"yes", "no", "a", "an"}
  for row in POSITION_WORDS:
    words |= set(" ".join(row).split())
  out = sorted(words)
  for t in ATTRIBUTE_TEMPLATES + SPATIAL_TEMPLATES + RELATIONAL_TEMPLATES:
    out.append(t.format(color="red", shape="circle", pos="top left"))
  if grounding:
    out.append(detect_prompt(SHAPES[:num_shapes]))
    out += [detect_prompt([t.format(color="red", shape="circle", pos="top left")]) for t in REFER_TEMPLATES]
    out += [GROUNDED_CAPTION_PROMPT, "<phrase>a red circle</phrase> at the top left"]
    out += [t.format(color="red") for t in GROUNDED_VQA_TEMPLATES]
  return out
