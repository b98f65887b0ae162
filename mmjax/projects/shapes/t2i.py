"""The text-to-image variant of the shapes data: prompts with a spatial relation, held-out combinations.

A scene holds 1 to ``max_objects`` objects of distinct colours (so a colour names one object and a
relation's two referents are never ambiguous), drawn like the six-object scenes of scenes.py: shapes
``SHAPES[:num_shapes]``, ``object_size(image_size)`` wide, non-overlapping boxes with at least one
background pixel between them, on the black background.

Captions (= prompts) name every object's colour and shape; with two or more objects, the first two
are joined by a relation and the rest follow, the last after "and":

  "a red circle"
  "a red circle to the left of a blue square"
  "a red circle above a blue square, and a green triangle"

``Spec`` is the structured form (objects as (colour, shape) in text order, the relation as (i, rel,
j)); ``prompt_text`` writes it and ``parse_prompt`` reads it back (also free prompts in the same
words: any order, "," / "and" / ", and" between parts, at most one relation).

Relations (``RELATIONS``) are defined on the objects' pixel centroids (``pixel_centroid``, in
continuous image coordinates) with a margin of one object width (``relation_margin``): "A left of B"
holds when B's centroid is at least the margin to the right of A's (likewise right of / above /
below). Pairs closer than the margin along an axis are neither left nor right of each other, so a
caption never states a relation that is borderline, and a generated image is held to the same rule
(parse.py). Sampled scenes are redrawn until the caption's relation holds.

Held-out combinations (``held_out_combinations``, from the data seed): ``pairs`` (colour, shape)
pairs and ``relations`` relational triples (pair, rel, pair), with a triple and its mirror ("B right
of A" for "A left of B") held out together, so that train never states the fact either way. Train
and validation captions contain none of them; a fraction of test scenes (``test_held_out_fraction``)
each show one, so the test split measures composition (``is_held_out`` tells those prompts apart).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from typing import Sequence

import numpy as np

from mmjax.projects.shapes.scenes import (
  COLORS,
  SHAPES,
  SceneObject,
  _as_rng,
  _check_args,
  object_mask,
  object_phrase,
  object_size,
  place_centres,
  scene_seed,
)

RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# (axis of the centroid: 0 = y, 1 = x; sign of (B - A) when "A <rel> B" holds).
_AXIS_SIGN = {"left of": (1, 1), "right of": (1, -1), "above": (0, 1), "below": (0, -1)}

Pair = tuple[str, str]  # (colour, shape)
Triple = tuple[Pair, str, Pair]  # (pair, relation, pair)

# Redraw budgets: sampling is by rejection, and a config that leaves nothing to draw must fail, not hang.
_MAX_DRAWS = 2000


@dataclasses.dataclass(frozen=True)
class Spec:
  """A prompt's content: objects as (colour, shape) in text order, and (i, relation, j) or None."""

  objects: tuple[Pair, ...]
  relation: tuple[int, str, int] | None = None

  def triple(self) -> Triple | None:
    if self.relation is None:
      return None
    i, rel, j = self.relation
    return (self.objects[i], rel, self.objects[j])


# ----------------------------------------------------------------------------------------------
# Geometry


def relation_margin(image_size: int) -> int:
  """The margin of every relation, in pixels: one object width, so that "left of" between rendered
  objects means their column ranges do not overlap."""
  return object_size(image_size)


def pixel_centroid(ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
  """(y, x) centroid of pixels (row, column indices) in continuous image coordinates (a pixel's centre
  is index + 0.5, as in scenes.py). Integer sums, one division: the same pixels give bit-identical
  centroids whatever order they come in, so the sampler and the parser agree exactly."""
  n = len(ys)
  return int(np.sum(ys, dtype=np.int64)) / n + 0.5, int(np.sum(xs, dtype=np.int64)) / n + 0.5


@functools.lru_cache(maxsize=64)
def _centroid_offset(shape: str, image_size: int) -> tuple[int, int, int]:
  """(sum of row offsets, sum of column offsets, area) of a ``shape`` mask about its centre pixel."""
  c = image_size // 2
  ys, xs = np.nonzero(object_mask(SceneObject("red", shape, c, c), image_size))
  return int((ys - c).sum()), int((xs - c).sum()), len(ys)


def object_centroid(obj: SceneObject, image_size: int) -> tuple[float, float]:
  """The centroid of ``obj``'s rendered pixels (``pixel_centroid`` of its mask, without rendering:
  masks never touch the border, so a mask is its centred copy shifted by whole pixels)."""
  sy, sx, n = _centroid_offset(obj.shape, image_size)
  return (obj.y * n + sy) / n + 0.5, (obj.x * n + sx) / n + 0.5


def relation_holds(a: Sequence[float], b: Sequence[float], rel: str, margin: float) -> bool:
  """Whether "A <rel> B" holds for centroids ``a``, ``b`` ((y, x)): B lies at least ``margin`` from A
  along the relation's axis, on its side."""
  axis, sign = _AXIS_SIGN[rel]
  return sign * (b[axis] - a[axis]) >= margin


# ----------------------------------------------------------------------------------------------
# Prompts


def prompt_text(spec: Spec) -> str:
  """The caption of ``spec`` (module docstring). The relation's objects must be adjacent in the list."""
  phrases = [object_phrase(c, s) for c, s in spec.objects]
  parts = []
  k = 0
  while k < len(phrases):
    if spec.relation is not None and spec.relation[0] == k:
      i, rel, j = spec.relation
      if j != i + 1:
        raise ValueError(f"a caption relates adjacent objects; got relation {spec.relation} in {spec}.")
      parts.append(f"{phrases[i]} {RELATION_PHRASES[rel]} {phrases[j]}")
      k += 2
    else:
      parts.append(phrases[k])
      k += 1
  if len(parts) > 1:
    parts[-1] = "and " + parts[-1]
  return ", ".join(parts)


_REL_WORDS = {tuple(p.split()): r for r, p in RELATION_PHRASES.items()}


def parse_prompt(text: str) -> Spec:
  """The Spec of a prompt in the captions' words (the inverse of ``prompt_text``). Also reads free
  prompts in the same words: any case, a final ".", parts separated by ",", "and" or ", and", and the
  relation between any two neighbouring phrases. Anything else (an unknown word, two relations, a
  missing article) is a ValueError naming the text."""

  def fail(why: str):
    raise ValueError(f"cannot parse prompt {text!r}: {why}.")

  tokens = re.sub(r",", " , ", text.strip().lower().rstrip(".")).split()
  if not tokens:
    fail("empty")
  objects: list[Pair] = []
  relation = None
  pos = 0

  def phrase() -> Pair:
    nonlocal pos
    words = tokens[pos : pos + 3]
    if len(words) < 3 or words[0] not in ("a", "an") or words[1] not in COLORS or words[2] not in SHAPES:
      fail(f"expected '<a|an> <colour> <shape>' at {' '.join(tokens[pos:]) or 'the end'!r}")
    pos += 3
    return words[1], words[2]

  while True:
    objects.append(phrase())
    found = [(w, r) for w, r in _REL_WORDS.items() if tuple(tokens[pos : pos + len(w)]) == w]
    if found:
      if relation is not None:
        fail("more than one relation")
      words, rel = found[0]
      pos += len(words)
      relation = (len(objects) - 1, rel, len(objects))
      objects.append(phrase())
    if pos == len(tokens):
      break
    start = pos
    while pos < len(tokens) and tokens[pos] in (",", "and"):
      pos += 1
    if tokens[start:pos] not in ([","], ["and"], [",", "and"]):
      fail(f"expected ',', 'and' or ', and' at {' '.join(tokens[start:]) or 'the end'!r}")
  return Spec(tuple(objects), relation)


# ----------------------------------------------------------------------------------------------
# Held-out combinations


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """Combinations that train and validation captions never state (module docstring)."""

  pairs: tuple[Pair, ...] = ()
  relations: tuple[Triple, ...] = ()  # one triple per held-out fact (its mirror is held out with it)

  @functools.cached_property
  def _triples(self) -> frozenset:
    return frozenset(self.relations) | frozenset((b, INVERSE[r], a) for a, r, b in self.relations)

  def pair_held_out(self, pair: Pair) -> bool:
    return tuple(pair) in self.pairs

  def triple_held_out(self, triple: Triple | None) -> bool:
    return triple is not None and triple in self._triples

  def is_held_out(self, spec: Spec) -> bool:
    """Whether ``spec`` states any held-out combination (a test prompt that measures composition)."""
    return any(self.pair_held_out(p) for p in spec.objects) or self.triple_held_out(spec.triple())


def _check_relations(relations) -> tuple[str, ...]:
  relations = tuple(relations)
  if not relations or len(set(relations)) != len(relations) or not set(relations) <= set(RELATIONS):
    raise ValueError(f"relations must be distinct entries of {RELATIONS}, got {relations}.")
  return relations


def held_out_combinations(
  seed: int, num_shapes: int = 3, relations=RELATIONS, pairs: int = 2, triples: int = 20
) -> HeldOut:
  """The HeldOut of data seed ``seed``: ``pairs`` (colour, shape) pairs, drawn so that every colour
  and every shape keeps a pair in train, and ``triples`` relational facts (pair, rel, pair) between
  pairs that are not held out (so a held-out fact is new as a composition, not by its words)."""
  if num_shapes not in (2, 3):
    raise ValueError(f"num_shapes must be 2 or 3, got {num_shapes}")
  return _held_out(int(seed), int(num_shapes), _check_relations(relations), int(pairs), int(triples))


@functools.lru_cache(maxsize=32)  # every scene of a split asks for it
def _held_out(seed: int, num_shapes: int, relations: tuple[str, ...], pairs: int, triples: int) -> HeldOut:
  rng = np.random.default_rng([int(seed), 0x7291])  # its own stream: independent of the scenes
  kinds = SHAPES[:num_shapes]
  all_pairs = [(c, s) for c in COLORS for s in kinds]
  if not 0 <= pairs <= len(all_pairs) - max(len(COLORS), len(kinds)):
    raise ValueError(f"held_out_pairs must be in [0, {len(all_pairs) - len(COLORS)}], got {pairs}.")
  for _ in range(_MAX_DRAWS):
    held = [all_pairs[int(k)] for k in rng.permutation(len(all_pairs))[:pairs]]
    kept = [p for p in all_pairs if p not in held]
    if {c for c, _ in kept} == set(COLORS) and {s for _, s in kept} == set(kinds):
      break
  else:
    raise AssertionError("no draw of held-out pairs keeps every colour and shape")
  # One representative per fact (the lesser of a triple and its mirror), in a fixed order.
  facts = sorted(
    {min((a, r, b), (b, INVERSE[r], a)) for a, b in itertools.permutations(kept, 2) if a[0] != b[0] for r in relations}
  )
  if not 0 <= triples <= len(facts) // 2:
    raise ValueError(f"held_out_relations must be in [0, {len(facts) // 2}] (half of the facts), got {triples}.")
  chosen = sorted(facts[int(k)] for k in rng.permutation(len(facts))[:triples])
  # A fact's representative may use a relation outside `relations` (its mirror is the one in use).
  chosen = [t if t[1] in relations else (t[2], INVERSE[t[1]], t[0]) for t in chosen]
  return HeldOut(tuple(sorted(held)), tuple(chosen))


# ----------------------------------------------------------------------------------------------
# Scenes


def _draw_spec(rng, num_shapes: int, max_objects: int, relations, held_out: HeldOut | None, require) -> Spec:
  """The objects and relation of a scene. ``require``: None, a Pair that must be one of the objects,
  or a Triple that must be the relation. With ``held_out``, nothing else of it may appear."""
  kinds = SHAPES[:num_shapes]
  for _ in range(_MAX_DRAWS):
    lo = 2 if require is not None and len(require) == 3 else 1
    n = int(rng.integers(lo, max_objects + 1))
    colors = [COLORS[int(k)] for k in rng.permutation(len(COLORS))]
    objs = [(c, kinds[int(rng.integers(num_shapes))]) for c in colors[:n]]
    relation = (0, relations[int(rng.integers(len(relations)))], 1) if n >= 2 else None
    if require is not None and len(require) == 2:  # a pair, at a random place in the caption
      objs = [o for o in objs if o[0] != require[0]][: n - 1]
      objs.insert(int(rng.integers(n)), tuple(require))
    elif require is not None:  # a relational fact, written either way round that `relations` has
      a, rel, b = require
      ways = [(a, rel, b), (b, INVERSE[rel], a)]
      a, rel, b = ways[int(rng.integers(2))] if ways[1][1] in relations else ways[0]
      objs = [a, b] + [o for o in objs if o[0] not in (a[0], b[0])][: n - 2]
      relation = (0, rel, 1)
    spec = Spec(tuple(objs), relation)
    if held_out is None or require is not None or not held_out.is_held_out(spec):
      return spec
  raise ValueError("held-out combinations leave no caption to draw: hold out fewer.")


def t2i_scene(
  seed,
  image_size: int = 64,
  num_shapes: int = 3,
  max_objects: int = 3,
  relations=RELATIONS,
  held_out: HeldOut | None = None,
  require=None,
) -> tuple[tuple[SceneObject, ...], str, Spec]:
  """(objects in caption order, caption, spec) of the scene for ``seed`` (an int, a sequence of ints
  or a numpy Generator). ``held_out``: combinations the caption must not state (train, validation).
  ``require``: a held-out Pair or Triple the scene must show (a compositional test scene); the rest
  of the scene is drawn freely then. The caption's relation holds (``relation_holds``) in the
  rendered image."""
  _check_args(image_size, num_shapes)
  relations = _check_relations(relations)
  if not 1 <= max_objects <= len(COLORS):
    raise ValueError(f"max_objects must be in [1, {len(COLORS)}] (one object per colour), got {max_objects}.")
  rng = _as_rng(seed)
  spec = _draw_spec(rng, num_shapes, max_objects, relations, held_out, require)
  margin = relation_margin(image_size)
  for _ in range(_MAX_DRAWS):
    placed = place_centres(rng, len(spec.objects), image_size)
    if placed is None:
      continue
    objects = tuple(SceneObject(c, s, x, y) for (c, s), (x, y) in zip(spec.objects, placed))
    if spec.relation is None:
      return objects, prompt_text(spec), spec
    i, rel, j = spec.relation
    if relation_holds(object_centroid(objects[i], image_size), object_centroid(objects[j], image_size), rel, margin):
      return objects, prompt_text(spec), spec
  raise AssertionError(f"no layout satisfies {spec}")


@dataclasses.dataclass(frozen=True)
class T2IOptions:
  """The ``config.data.shapes.t2i`` block (data.py) as values."""

  max_objects: int = 3
  relations: tuple[str, ...] = RELATIONS
  held_out_pairs: int = 2
  held_out_relations: int = 20
  test_held_out_fraction: float = 0.5

  def __post_init__(self):
    object.__setattr__(self, "relations", _check_relations(self.relations))
    if not 1 <= self.max_objects <= len(COLORS):
      raise ValueError(f"t2i.max_objects must be in [1, {len(COLORS)}], got {self.max_objects}.")
    if self.max_objects < 2 and self.held_out_relations:
      raise ValueError("t2i.held_out_relations needs max_objects >= 2 (relations need two objects).")
    if not 0.0 <= self.test_held_out_fraction <= 1.0:
      raise ValueError(f"t2i.test_held_out_fraction must be in [0, 1], got {self.test_held_out_fraction}.")

  def held_out(self, seed: int, num_shapes: int) -> HeldOut:
    return held_out_combinations(int(seed), num_shapes, self.relations, self.held_out_pairs, self.held_out_relations)


def compositional(index: int, fraction: float) -> bool:
  """Whether test scene ``index`` shows a held-out combination: exactly round-down(n * fraction) of
  the first n scenes do, spread evenly."""
  return int((index + 1) * fraction) > int(index * fraction)


def split_scene(
  options: T2IOptions, seed: int, split: str, index: int, image_size: int = 64, num_shapes: int = 3, attempt: int = 0
):
  """``t2i_scene`` of scene ``index`` of ``split`` (train / validation avoid the held-out combinations;
  the compositional test scenes show one, the others avoid them too). ``attempt`` > 0 redraws it
  (``dataset_scenes`` uses that to keep layouts unique across splits)."""
  held = options.held_out(seed, num_shapes)
  rng = np.random.default_rng(scene_seed(seed, split, index) + ([attempt] if attempt else []))
  require = None
  if split == "test" and compositional(index, options.test_held_out_fraction):
    kinds = [k for k in (held.pairs, held.relations) if k]
    if kinds:
      items = kinds[int(rng.integers(len(kinds)))]
      require = items[int(rng.integers(len(items)))]
  return t2i_scene(rng, image_size, num_shapes, options.max_objects, options.relations, held, require)


def dataset_scenes(
  options: T2IOptions, seed: int, split_sizes: dict[str, int], image_size: int = 64, num_shapes: int = 3
) -> dict[str, list]:
  """Every split's scenes ({split: [(objects, caption, spec), ...]}), with no layout (hence image)
  in two splits: a scene whose layout an earlier split (train, validation, test order) has is drawn
  again. Few-object layouts repeat by chance (one object has only a few thousand of them)."""
  seen: set = set()
  out = {}
  for split in ("train", "validation", "test"):
    if split not in split_sizes:
      continue
    scenes, layouts = [], set()
    for i in range(int(split_sizes[split])):
      for attempt in range(100):
        scene = split_scene(options, seed, split, i, image_size, num_shapes, attempt)
        key = tuple(sorted((o.color, o.shape, o.x, o.y) for o in scene[0]))
        if key not in seen:
          break
      else:
        raise AssertionError(f"{split} scene {i} repeats another split's layout in 100 draws")
      layouts.add(key)
      scenes.append(scene)
    seen |= layouts
    out[split] = scenes
  return out


def vocabulary_texts(relations=RELATIONS) -> list[str]:
  """Texts that hold every caption word (the relation phrases and "and"), for the tokenizer."""
  return [f"a red circle {RELATION_PHRASES[r]} a blue square, and an orange triangle" for r in relations]
