"""Grounding questions of the shapes data (refer, detect, grounded_caption, grounded_vqa): exact boxes,
answers checked against brute force on the rendered scene, and the examples the pipeline makes."""

import math
import re

import ml_collections
import numpy as np
import pytest

from mmjax.data import prepare
from mmjax.data.examples import GROUNDED_CAPTION_PROMPT, GROUNDING_TASKS, TASK_NAMES
from mmjax.location_tokens import LocationTokens, strip_boxes
from mmjax.projects.shapes import data as shapes_dataset, scenes as shapes

LOC = LocationTokens.for_vocab(500, 64)
ALL = {"refer": 2, "detect": 2, "grounded_caption": 1, "grounded_vqa": 2}


def pixel_boxes(image: np.ndarray) -> dict[str, tuple]:
  """{colour: (y0, x0, y1, x1)} of each colour's pixels in a rendered image, in pixel edges: the
  reference the generator's boxes must equal, read off the image alone."""
  size = image.shape[0]
  out = {}
  for color, rgb in shapes.COLOR_RGB.items():
    rows, cols = np.nonzero(np.all(image == np.asarray(rgb, np.uint8), axis=-1))
    if len(rows):
      out[color] = (rows.min() / size, cols.min() / size, (rows.max() + 1) / size, (cols.max() + 1) / size)
  return out


def position(o, size) -> str:
  """The 3x3 position word of an object's continuous centre, computed independently of scenes.py."""
  fx, fy = (o.x + 0.5) / size, (o.y + 0.5) / size
  row = ["top", "", "bottom"][min(2, int(fy * 3))]
  col = ["left", "", "right"][min(2, int(fx * 3))]
  return " ".join(w for w in (row, col) if w) or "center"


def phrase(o) -> str:
  return ("an " if o.color[0] in "aeiou" else "a ") + f"{o.color} {o.shape}"


@pytest.mark.parametrize("size", [32, 64, 100])
def test_object_box_is_the_bounding_box_of_the_rendered_pixels(size):
  seen = set()
  for i in range(40):
    objects = shapes.sample_objects([7, 0, i], size, 3 if i % 2 else 2)
    truth = pixel_boxes(shapes.render(objects, size))
    for o in objects:
      assert shapes.object_box(o, size) == truth[o.color], (size, i, o)
      seen.add(o.shape)
  assert seen == set(shapes.SHAPES)


def _check_grounding(s, num_shapes):
  """Every grounding question of scene `s` answered right, by brute force on its rendered image."""
  size = s.image_size
  boxes = pixel_boxes(s.image)
  by_color = {o.color: o for o in s.objects}
  for q, a, kind in zip(s.questions, s.answers, s.question_types):
    if kind == "refer":
      if m := re.fullmatch(r"detect the (\w+) (\w+)", q):
        hits = [o for o in s.objects if o.color == m[1] and o.shape == m[2]]
      else:
        m = re.fullmatch(r"detect the (\w+) at the ([\w ]+)", q)
        assert m, q
        hits = [o for o in s.objects if o.shape == m[1] and position(o, size) == m[2]]
      assert len(hits) == 1, (q, s.objects)  # the expression names one object
      assert LOC.parse(a) == [(q[len("detect ") :], boxes[hits[0].color])], (q, a)
    elif kind == "detect":
      assert q.startswith("detect ")
      labels = q[len("detect ") :].split(" ; ")
      assert labels and len(set(labels)) == len(labels) and set(labels) <= set(shapes.SHAPES[:num_shapes]), q
      got = LOC.parse(a)
      want = [(o.shape, boxes[o.color]) for o in s.objects if o.shape in labels]
      assert sorted(got) == sorted(want), (q, a)
      # The library's fixed order: raster (top-left corner) over every kept object, labels mixed.
      keys = [box[:2] for _, box in got]
      assert keys == sorted(keys), a
      assert (a == "") == (not want)
    elif kind == "grounded_caption":
      assert q == GROUNDED_CAPTION_PROMPT
      assert LOC.phrases(a) == [(phrase(by_color[c]), boxes[c]) for c in shapes.COLORS]
      assert strip_boxes(a).replace("<phrase>", "").replace("</phrase>", "") == s.caption
    elif kind == "grounded_vqa":
      m = re.fullmatch(r"which object is (closest to|furthest from) the (\w+) object\?", q)
      assert m, q
      ref = by_color[m[2]]
      dist = {o.color: math.hypot(o.x - ref.x, o.y - ref.y) for o in s.objects if o is not ref}
      target = (min if m[1] == "closest to" else max)(dist.values())
      best = [c for c, d in dist.items() if d == target]
      assert len(best) == 1, q  # never asked on a tie
      assert LOC.phrases(a) == [(phrase(by_color[best[0]]), boxes[best[0]])], (q, a)
      assert a.startswith("<phrase>") and a.endswith("</box>")  # the phrase and its box, nothing else
    else:
      assert kind not in GROUNDING_TASKS


@pytest.mark.parametrize("size,num_shapes", [(64, 3), (100, 2), (32, 3)])
def test_grounding_answers_match_brute_force(size, num_shapes):
  kinds_seen, refer_templates, vqa_templates, empty_detect = set(), set(), set(), 0
  for i in range(150):
    s = shapes.generate_scene([8, 0, i], size, num_shapes, grounding_per_type=ALL)
    assert len(set(s.questions)) == len(s.questions)
    grounding = [t for t in s.question_types if t in GROUNDING_TASKS]
    assert s.question_types[-len(grounding) :] == grounding  # after all other questions
    assert grounding == sorted(grounding, key=GROUNDING_TASKS.index)
    # detect always has its 2 (>= 4 distinct prompts), grounded_caption its one prompt.
    assert grounding.count("detect") == 2 and grounding.count("grounded_caption") == 1
    _check_grounding(s, num_shapes)
    for q, a, t in zip(s.questions, s.answers, s.question_types):
      kinds_seen.add(t)
      if t == "refer":
        refer_templates.add(" at the " in q)
      if t == "grounded_vqa":
        vqa_templates.add(q.split()[3])
      empty_detect += t == "detect" and a == ""
  assert set(GROUNDING_TASKS) <= kinds_seen
  assert refer_templates == {True, False} and vqa_templates == {"closest", "furthest"}
  if num_shapes == 3:
    assert empty_detect > 0  # a label absent from the scene contributes no objects


def test_markup_boxes_are_exact_at_power_of_two_and_decimal_sizes():
  for size in (64, 100):
    s = shapes.generate_scene([9, 0, 0], size, grounding_per_type={"grounded_caption": 1})
    a = s.answers[-1]
    assert [box for _, box in LOC.phrases(a)] == [shapes.object_box(o, size) for o in s.objects]


def test_no_grounding_leaves_the_scene_and_its_rng_as_before():
  zeros = {k: 0 for k in GROUNDING_TASKS}
  for i in range(30):
    rng_a, rng_b, rng_c = (np.random.default_rng([4, 0, i]) for _ in range(3))
    plain = shapes.generate_scene(rng_a)
    zero = shapes.generate_scene(rng_b, grounding_per_type=zeros)
    some = shapes.generate_scene(rng_c, grounding_per_type=ALL)
    for s in (zero, some):
      n = len(plain.questions)
      assert (s.questions[:n], s.answers[:n], s.question_types[:n]) == (
        plain.questions,
        plain.answers,
        plain.question_types,
      )
      assert s.caption == plain.caption and np.array_equal(s.image, plain.image)
    assert len(zero.questions) == len(plain.questions)
    # What the rng draws next (a video's velocities) is the same too.
    assert rng_a.integers(1 << 30) == rng_b.integers(1 << 30)


def test_config_names_and_question_types():
  plain = shapes_dataset.shapes_config()
  assert plain.name == "s64_k3_n12000-500-1000_q2-2-4_seed0"
  assert shapes_dataset.shapes_config(grounding_per_type={k: 0 for k in GROUNDING_TASKS}).name == plain.name
  g = shapes_dataset.shapes_config(
    grounding_per_type={"refer": 2, "detect": 1, "grounded_caption": 1, "grounded_vqa": 1}
  )
  assert g.name == "s64_k3_n12000-500-1000_q2-2-4_g2-1-1-1_seed0"
  assert g.grounding_per_type == {"refer": 2, "detect": 1, "grounded_caption": 1, "grounded_vqa": 1}
  both = shapes_dataset.shapes_config(train_auxiliary_questions={"count": 1}, grounding_per_type={"detect": 3})
  assert both.name == "s64_k3_n12000-500-1000_q2-2-4_aux0-0-1_g0-3-0-0_seed0"
  # The config block's defaults (and a block saved before grounding existed) keep the old name.
  data = shapes_dataset.default_data_config()
  assert shapes_dataset.builder_config(data).name == plain.name
  assert dict(data.shapes.grounding_per_type) == {k: 0 for k in GROUNDING_TASKS}
  old = ml_collections.ConfigDict(data.to_dict())
  del old.shapes["grounding_per_type"]
  assert shapes_dataset.builder_config(old).name == plain.name
  # Grounding tasks come after every other kind, which keep their indices.
  assert plain.question_types == shapes.QUESTION_KINDS + shapes.AUXILIARY_KINDS + GROUNDING_TASKS


@pytest.mark.parametrize(
  "counts,match",
  [
    ({"where": 1}, r"config\.data\.shapes\.grounding_per_type: unknown .*'where'"),
    ({"refer": -1}, r"config\.data\.shapes\.grounding_per_type: counts must be integers >= 0.*refer=-1"),
    ({"detect": 1.5}, r"config\.data\.shapes\.grounding_per_type: counts must be integers >= 0"),
  ],
)
def test_grounding_config_errors_name_the_key(counts, match):
  with pytest.raises(ValueError, match=match):
    shapes_dataset.shapes_config(grounding_per_type=counts)


def test_generate_scene_rejects_unknown_tasks():
  with pytest.raises(ValueError, match="unknown grounding tasks.*'where'"):
    shapes.generate_scene([0, 0, 0], grounding_per_type={"where": 1})


def test_vocabulary_covers_the_grounding_texts():
  plain = shapes.vocabulary_texts()
  assert not any("detect" in t or "<phrase>" in t for t in plain)  # old datasets' tokenizers unchanged
  vocab = set()
  for t in shapes.vocabulary_texts(grounding=True):
    vocab |= set(re.sub(r"[?,;]|</?phrase>", " ", t).split())
  for i in range(30):
    s = shapes.generate_scene([2, 0, i], grounding_per_type=ALL)
    for text in s.questions + s.answers:
      assert set(re.sub(r"[?,;]|</?phrase>", " ", strip_boxes(text)).split()) <= vocab, text


# ------------------------------------------------------------------------------------------------
# End to end: records -> examples with location tokens


def _config(data_dir):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 8
  c.data = shapes_dataset.default_data_config()
  c.data.data_dir = str(data_dir)
  c.data.vocab_size = 400
  c.data.location_bins = 64
  c.data.max_target_len = 128  # a grounded caption is up to about 110 tokens
  c.data.max_prompt_len = 32  # a 400-piece vocabulary (256 of them bytes) cuts words into many pieces
  s = c.data.shapes
  s.train_scenes, s.validation_scenes, s.test_scenes = 20, 5, 5
  s.questions_per_type = {"attribute": 1, "spatial": 1, "relational": 1}
  s.grounding_per_type = {k: 1 for k in GROUNDING_TASKS}
  return c


def test_grounding_examples_end_to_end(tmp_path):
  cfg = _config(tmp_path)
  builder, tok = prepare.prepare(cfg)
  assert "_q1-1-1_g1-1-1-1_seed0" in str(builder.data_dir)
  for split in ("train", "validation", "test"):
    data = prepare.load_split(cfg, split, tok, builder)
    assert not data.truncated["target"] and not data.truncated["prompt"]
    found = set()
    for e in range(len(data)):
      task = TASK_NAMES[int(data.task[e])]
      if task not in GROUNDING_TASKS:
        continue
      found.add(task)
      ri, j = (int(v) for v in data.index[e])
      record = data.records[ri]
      assert record["question_types"][j] == task
      ex = data.example(e, media=False)
      assert int(ex["task"]) == TASK_NAMES.index(task)
      assert data.question_types[int(ex["qtype"])] == task
      assert tok.decode(ex["prompt"][: int(ex["prompt_len"])]) == record["questions"][j]
      n = int(ex["target_mask"].sum()) - 1  # without eos
      decoded = tok.decode(ex["target_out"][:n])
      reference = record["answers"][j]
      read = tok.locations.phrases if task in ("grounded_caption", "grounded_vqa") else tok.locations.parse
      got, want = read(decoded), read(reference)
      assert len(got) == len(want) and (want or task == "detect"), (decoded, reference)
      # Reference boxes are the exact pixel boxes of the record's image ...
      truth = set(pixel_boxes(np.asarray(data.image_of(e))).values())
      assert all(box in truth for _, box in want), reference
      # ... and the target's location tokens are within half a bin of them.
      for (gl, gb), (wl, wb) in zip(got, want):
        assert gl == wl
        assert np.all(np.abs(np.subtract(gb, wb)) <= 1 / 128 + 1e-12), (gb, wb)
    assert found == set(GROUNDING_TASKS), (split, found)
