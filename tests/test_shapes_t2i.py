"""The text-to-image variant of the shapes data (t2i.py) and its exact image parser (parse.py): the
parser on the dataset's own renders and on hand-made images with hand-computed answers, the relation
rule, held-out combinations, prompts round trips, scores, and the records the data config builds."""

import collections
import time

import ml_collections
import numpy as np
import pytest

from mmjax.data import prepare
from mmjax.projects.shapes import data as shapes_dataset, parse, scenes as shapes, t2i
from mmjax.projects.shapes.scenes import SceneObject
from mmjax.projects.shapes.t2i import Spec

OPTIONS = t2i.T2IOptions()
SIZES = {"train": 2000, "validation": 300, "test": 1000}


@pytest.fixture(scope="module")
def scenes():
  return t2i.dataset_scenes(OPTIONS, 0, SIZES, 64, 3)


def canvas(size: int = 64) -> np.ndarray:
  img = np.zeros((size, size, 3), np.uint8)
  img[...] = shapes.BACKGROUND
  return img


def put(img: np.ndarray, color: str, shape: str, x: int, y: int, rgb=None) -> np.ndarray:
  img[shapes.object_mask(SceneObject(color, shape, x, y), img.shape[0])] = (
    shapes.COLOR_RGB[color] if rgb is None else rgb
  )
  return img


def found(img):
  return [(o.color, o.shape) for o in parse.parse_image(img)]


# ----------------------------------------------------------------------------------------------
# The parser on the renderer's own images


def test_parser_exact_on_dataset_renders(scenes):
  t0 = time.perf_counter()
  exact = 0
  for objects, _, spec in scenes["test"]:
    s = parse.score(spec, shapes.render(objects, 64))
    exact += s["scene_exact"] and s["relation_ok"] in (None, True)
  rate = exact / len(scenes["test"])
  # The six-object scenes of the question data too (same renderer, more objects per image).
  six = 0
  for i in range(300):
    objs = shapes.sample_objects(shapes.scene_seed(0, "test", i), 64, 3)
    six += collections.Counter(found(shapes.render(objs, 64))) == collections.Counter((o.color, o.shape) for o in objs)
  print(
    f"exact parse: t2i test {rate:.4f} ({len(scenes['test'])} scenes), six-object {six / 300:.4f} (300 scenes), "
    f"{time.perf_counter() - t0:.2f} s"
  )
  assert rate >= 0.995
  assert six / 300 >= 0.995


@pytest.mark.parametrize("size", [32, 48, 96, 128])
def test_parser_exact_at_other_sizes(size):
  for i in range(60):
    objects, _, spec = t2i.split_scene(OPTIONS, 1, "test", i, size)
    s = parse.score(spec, shapes.render(objects, size))
    assert s["scene_exact"] and s["relation_ok"] in (None, True), (size, i, spec)


def test_shape_calibration_at_every_image_size():
  # Each shape at every object size of the image sizes the data allows (32..256; a mask depends on
  # the image size only through object_size): the right kind, its exact box, area and centroid.
  sizes = {shapes.object_size(s): s for s in range(256, 31, -1)}.values()
  assert len(sizes) == 33
  for size in sizes:
    for shape in shapes.SHAPES:
      obj = SceneObject("gray", shape, size // 2, size // 3)
      img = shapes.render([obj], size)
      (p,) = parse.parse_image(img)
      mask = shapes.object_mask(obj, size)
      assert (p.color, p.shape) == ("gray", shape), (size, shape)
      assert p.area == mask.sum()
      assert tuple(v / size for v in p.bbox) == shapes.object_box(obj, size)
      assert p.centroid == t2i.object_centroid(obj, size)


def test_min_area():
  assert parse.min_area(32) == 4  # ceil(5 * 5 / 8)
  assert parse.min_area(64) == 11  # ceil(9 * 9 / 8)
  # Under half of the smallest rendered object (a triangle) at every size.
  for size in range(32, 257):
    tri = shapes.object_mask(SceneObject("red", "triangle", size // 2, size // 2), size).sum()
    assert parse.min_area(size) < tri / 2


# ----------------------------------------------------------------------------------------------
# Hand-made images


def test_single_square_hand_computed():
  # object_size(64) = 9, r = 4.5: |dx|, |dy| <= 4 around (x, y) = (20, 30).
  (p,) = parse.parse_image(put(canvas(), "red", "square", 20, 30))
  assert p == parse.ParsedObject("red", "square", (30.5, 20.5), (26, 16, 35, 25), 81)


def test_triangle_hand_computed():
  # Rows 26..34 (dy -4..4) hold 1, 1, 3, 3, 5, 5, 7, 7, 9 pixels (|dx| <= (dy + 4.5) / 2).
  (p,) = parse.parse_image(put(canvas(), "green", "triangle", 20, 30))
  widths = [1, 1, 3, 3, 5, 5, 7, 7, 9]
  assert p.shape == "triangle" and p.area == 41 == sum(widths)
  assert p.centroid == (sum(r * w for r, w in zip(range(26, 35), widths)) / 41 + 0.5, 20.5)
  assert p.bbox == (26, 16, 35, 25)


def test_touching_objects_of_different_colours():
  # Columns 16..24 and 25..33: the squares share an edge; each colour is its own component.
  img = put(put(canvas(), "red", "square", 20, 20), "blue", "square", 29, 20)
  objs = parse.parse_image(img)
  assert [(o.color, o.shape, o.bbox) for o in objs] == [
    ("red", "square", (16, 16, 25, 25)),
    ("blue", "square", (16, 25, 25, 34)),
  ]
  assert parse.relations_between(objs[0], objs[1], t2i.relation_margin(64)) == ["left of"]


def test_touching_objects_of_the_same_colour_merge():
  # One red component 9 x 18 (aspect 0.5): one object of no shape kind, so a prompt of two red
  # squares is neither found nor exact.
  img = put(put(canvas(), "red", "square", 20, 20), "red", "square", 29, 20)
  (p,) = parse.parse_image(img)
  assert p == parse.ParsedObject("red", None, (20.5, 25.0), (16, 16, 25, 34), 162)
  s = parse.score("a red square to the left of a red square", img)
  assert s == {"object_hits": 0, "objects": 2, "scene_exact": False, "relation_ok": False}
  # Diagonal contact counts (8-connectivity): corner to corner is one component as well.
  img = put(put(canvas(), "red", "square", 20, 20), "red", "square", 29, 29)
  assert found(img) == [("red", None)]


def test_off_palette_noise_forms_no_object():
  img = put(canvas(), "blue", "circle", 40, 40)
  img[5:15, 5:15] = (128, 0, 255)  # purple: 121 from blue, farther from everything else
  img[50:52, 10:60] = (70, 70, 70)  # dark gray: 86.6 from the background, 121 from gray
  classes = parse.pixel_classes(img)
  assert (classes[5:15, 5:15] == -1).all() and (classes[50:52, 10:60] == -1).all()
  assert found(img) == [("blue", "circle")]
  # Near-palette colours (within 40) are the colour; noise inside an object only removes its pixels.
  img = put(canvas(), "red", "square", 20, 20, rgb=(215, 40, 35))  # 24.5 from red
  img[18, 18] = img[19, 22] = img[22, 20] = (128, 0, 255)
  (p,) = parse.parse_image(img)
  assert (p.color, p.shape, p.area, p.bbox) == ("red", "square", 78, (16, 16, 25, 25))


def test_speck_below_min_area_is_dropped():
  img = put(canvas(), "orange", "triangle", 40, 40)
  img[5:7, 5:10] = shapes.COLOR_RGB["yellow"]  # 10 pixels < min_area(64) = 11
  img[60, 60] = shapes.COLOR_RGB["orange"]
  assert found(img) == [("orange", "triangle")]
  img[5:7, 5:10] = shapes.BACKGROUND
  img[5:9, 5:9] = shapes.COLOR_RGB["yellow"]  # a filled 4 x 4 box, 16 pixels: an object, a small square
  assert found(img) == [("orange", "triangle"), ("yellow", "square")]


def test_extra_and_missing_objects():
  img = put(put(canvas(), "red", "circle", 15, 15), "blue", "square", 45, 45)
  s = parse.score("a red circle", img)  # an extra object
  assert s == {"object_hits": 1, "objects": 1, "scene_exact": False, "relation_ok": None}
  s = parse.score("a red circle above a blue square, and a green triangle", img)  # a missing one
  assert s == {"object_hits": 2, "objects": 3, "scene_exact": False, "relation_ok": True}
  s = parse.score("a red square above a blue square", img)  # a wrong shape: the relation has no referent
  assert s == {"object_hits": 1, "objects": 2, "scene_exact": False, "relation_ok": False}


def test_shapes_of_no_kind():
  img = canvas()
  yy, xx = np.mgrid[0:64, 0:64]
  img[np.abs(yy - 20) + np.abs(xx - 20) <= 6] = shapes.COLOR_RGB["red"]  # a diamond: symmetric, fill ~0.5
  img[(yy >= 40) & (yy <= 48) & (np.abs(xx - 40) <= (48 - yy) / 2)] = shapes.COLOR_RGB["blue"]  # apex down
  img[5:8, 40:60] = shapes.COLOR_RGB["green"]  # a bar
  assert found(img) == [("red", None), ("green", None), ("blue", None)]


# ----------------------------------------------------------------------------------------------
# Relations


def test_relation_rule_on_hand_placed_objects():
  m = t2i.relation_margin(64)
  assert m == 9
  a = (20.5, 20.5)
  assert t2i.relation_holds(a, (20.5, 29.5), "left of", m)  # exactly the margin
  assert not t2i.relation_holds(a, (20.5, 28.5), "left of", m)
  assert t2i.relation_holds((20.5, 29.5), a, "right of", m)
  assert t2i.relation_holds(a, (29.5, 0.5), "above", m)  # the other axis does not matter
  assert t2i.relation_holds((29.5, 0.5), a, "below", m)
  assert not t2i.relation_holds(a, (28.5, 20.5), "above", m)
  # On images: a square 9 columns right of another, and one 8 rows below it (inside the margin).
  img = put(put(put(canvas(), "red", "square", 20, 20), "blue", "square", 29, 20), "green", "square", 29, 28)
  red, green, blue = parse.parse_image(img)
  assert parse.relations_between(red, blue, m) == ["left of"]
  assert parse.relations_between(blue, red, m) == ["right of"]
  assert parse.relations_between(blue, green, m) == []
  assert parse.relations_between(red, green, m) == ["left of"]
  # A triangle's centroid lies 60 / 41 rows below its centre pixel (row offsets -4..4 weighted by
  # the widths 1, 1, 3, 3, 5, 5, 7, 7, 9), so the rule follows centroids, not centre pixels: a
  # triangle 8 rows below a square's centre is 8 + 60 / 41 = 9.46 >= 9 below its centroid, 7 rows
  # is 8.46 < 9.
  for dy, above in ((7, False), (8, True)):
    img = put(put(canvas(), "red", "square", 20, 20), "blue", "triangle", 31, 20 + dy)  # 2 columns apart
    sq, tri = parse.parse_image(img)
    assert tri.centroid[0] - sq.centroid[0] == pytest.approx(dy + 60 / 41)
    assert parse.relations_between(sq, tri, m) == ["left of"] + ["above"] * above


def test_generated_relations_hold_with_the_margin(scenes):
  m = t2i.relation_margin(64)
  for objects, _, spec in scenes["train"][:1000]:
    if spec.relation is not None:
      i, rel, j = spec.relation
      a, b = t2i.object_centroid(objects[i], 64), t2i.object_centroid(objects[j], 64)
      assert t2i.relation_holds(a, b, rel, m) and not t2i.relation_holds(a, b, t2i.INVERSE[rel], m)


# ----------------------------------------------------------------------------------------------
# Scenes, prompts and held-out combinations


def test_scene_contents(scenes):
  counts = collections.Counter()
  for split, items in scenes.items():
    for objects, caption, spec in items:
      assert 1 <= len(objects) <= OPTIONS.max_objects
      assert len({o.color for o in objects}) == len(objects)  # distinct colours
      assert [(o.color, o.shape) for o in objects] == list(spec.objects)
      assert (spec.relation is None) == (len(objects) == 1)
      counts[len(objects)] += 1
      if spec.relation:
        counts[spec.relation[1]] += 1
  assert all(counts[n] > 500 for n in (1, 2, 3)) and all(counts[r] > 400 for r in t2i.RELATIONS)


def test_parse_prompt_round_trip(scenes):
  for items in scenes.values():
    for _, caption, spec in items:
      assert t2i.parse_prompt(caption) == spec
      assert t2i.prompt_text(spec) == caption


def test_parse_prompt_free_text_and_errors():
  assert t2i.parse_prompt("a red circle") == Spec((("red", "circle"),))
  assert t2i.parse_prompt("A green square and an orange triangle below a gray circle.") == Spec(
    (("green", "square"), ("orange", "triangle"), ("gray", "circle")), (1, "below", 2)
  )
  assert t2i.parse_prompt("a red circle,a blue square , and a yellow square") == Spec(
    (("red", "circle"), ("blue", "square"), ("yellow", "square"))
  )
  bad = [
    "",
    "a purple circle",
    "a red hexagon",
    "red circle",
    "a red circle next to a blue square",
    "a red circle left of a blue square",
    "a red circle above a blue square below a green square",
    "a red circle above a blue square, and a green square to the left of a gray circle",
    "a red circle,, a blue square",
    "a red circle and",
  ]
  for text in bad:
    with pytest.raises(ValueError, match="cannot parse prompt"):
      t2i.parse_prompt(text)


def test_held_out_combinations(scenes):
  held = OPTIONS.held_out(0, 3)
  assert len(held.pairs) == 2 and len(held.relations) == 20
  assert held == t2i.held_out_combinations(0, 3, t2i.RELATIONS, 2, 20)  # deterministic from the seed
  assert held != OPTIONS.held_out(1, 3)
  # Held-out facts are between pairs that are not held out.
  assert not {p for a, _, b in held.relations for p in (a, b)} & set(held.pairs)
  mirrors = {(b, t2i.INVERSE[r], a) for a, r, b in held.relations}
  for split in ("train", "validation"):
    for _, caption, spec in scenes[split]:
      assert not set(spec.objects) & set(held.pairs), caption
      assert spec.triple() not in set(held.relations) | mirrors, caption
      assert not held.is_held_out(t2i.parse_prompt(caption))
  test = [spec for _, _, spec in scenes["test"]]
  seen_pairs = {p for s in test for p in s.objects}
  seen_facts = {s.triple() for s in test if s.relation}
  assert set(held.pairs) <= seen_pairs
  assert all(f in seen_facts or (f[2], t2i.INVERSE[f[1]], f[0]) in seen_facts for f in held.relations)
  # Every other test scene shows one (test_held_out_fraction 0.5); the rest are drawn like train.
  flags = [held.is_held_out(s) for s in test]
  assert all(flags[1::2]) and not any(flags[0::2])


def test_relations_subset_and_errors():
  options = t2i.T2IOptions(max_objects=2, relations=("above",), held_out_pairs=1, held_out_relations=5)
  held = options.held_out(3, 2)
  assert all(r == "above" for _, r, _ in held.relations)
  for i in range(200):
    _, caption, spec = t2i.split_scene(options, 3, "test", i, 64, 2)
    assert " to the " not in caption and " below " not in caption
    assert {s for _, s in spec.objects} <= {"circle", "square"}
  with pytest.raises(ValueError, match="relations"):
    t2i.T2IOptions(relations=("near",))
  with pytest.raises(ValueError, match="max_objects"):
    t2i.T2IOptions(max_objects=7)
  with pytest.raises(ValueError, match="held_out_relations needs"):
    t2i.T2IOptions(max_objects=1)
  with pytest.raises(ValueError, match="held_out_pairs"):
    t2i.held_out_combinations(0, 3, t2i.RELATIONS, 13, 0)


def test_layouts_unique_across_splits():
  # One object per scene: few layouts, so repeats across splits happen and are redrawn.
  options = t2i.T2IOptions(max_objects=1, held_out_pairs=0, held_out_relations=0)
  got = t2i.dataset_scenes(options, 0, {"train": 4000, "validation": 200, "test": 1000}, 32, 2)
  keys = {s: {tuple((o.color, o.shape, o.x, o.y) for o in objs) for objs, _, _ in v} for s, v in got.items()}
  assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
  assert not keys["validation"] & keys["test"]


# ----------------------------------------------------------------------------------------------
# Scores


def test_scores_and_aggregate():
  right = put(put(canvas(), "red", "square", 15, 30), "blue", "square", 45, 30)
  prompt = "a red square to the left of a blue square"
  s1 = parse.score(prompt, right)
  assert s1 == {"object_hits": 2, "objects": 2, "scene_exact": True, "relation_ok": True}
  s2 = parse.score("a blue square to the left of a red square", right)  # right objects, wrong relation
  assert s2 == {"object_hits": 2, "objects": 2, "scene_exact": True, "relation_ok": False}
  s3 = parse.score(t2i.parse_prompt("a red circle"), put(canvas(), "red", "circle", 30, 30))
  assert s3 == {"object_hits": 1, "objects": 1, "scene_exact": True, "relation_ok": None}
  s4 = parse.score("a green triangle", canvas())  # an empty image
  assert s4 == {"object_hits": 0, "objects": 1, "scene_exact": False, "relation_ok": None}
  assert parse.aggregate([s1, s2, s3, s4]) == {
    "t2i_object_accuracy": 5 / 6,
    "t2i_scene_accuracy": 3 / 4,
    "t2i_relation_accuracy": 1 / 2,
  }
  assert parse.aggregate([s3, s4]) == {"t2i_object_accuracy": 1 / 2, "t2i_scene_accuracy": 1 / 2}
  assert parse.evaluate([prompt, "a red circle"], [right, canvas()]) == {
    "t2i_object_accuracy": 2 / 3,
    "t2i_scene_accuracy": 1 / 2,
    "t2i_relation_accuracy": 1.0,
  }


# ----------------------------------------------------------------------------------------------
# The data config


def test_t2i_config_names_and_errors():
  plain = shapes_dataset.shapes_config()
  on = shapes_dataset.shapes_config(t2i=OPTIONS)
  assert plain.t2i is None and on.t2i == OPTIONS
  assert on.name == "s64_k3_n12000-500-1000_t2i3-lrab-h2-20-f0p5_seed0"
  assert on.questions_per_type == {"attribute": 0, "spatial": 0, "relational": 0}
  # The default block (enabled False) leaves the question data as it was.
  c = ml_collections.ConfigDict({"data": shapes_dataset.default_data_config()})
  assert prepare.builder_config(c).name == plain.name
  with pytest.raises(ValueError, match="object_sounds"):
    shapes_dataset.shapes_config(t2i=OPTIONS, object_sounds=True)
  with pytest.raises(ValueError, match="grounding_per_type"):
    shapes_dataset.shapes_config(t2i=OPTIONS, grounding_per_type={"refer": 1})


def test_t2i_records(tmp_path):
  c = ml_collections.ConfigDict({"data": shapes_dataset.default_data_config()})
  c.data.data_dir = str(tmp_path)
  c.data.shapes.train_scenes, c.data.shapes.validation_scenes, c.data.shapes.test_scenes = 20, 4, 6
  c.data.shapes.t2i.enabled = True
  c.data.shapes.t2i.relations = ("left of", "above")
  builder = prepare.prepare_builder(c)
  cfg = builder.builder_config
  assert cfg.t2i == t2i.T2IOptions(relations=("left of", "above"))
  want = t2i.dataset_scenes(cfg.t2i, 0, cfg.split_sizes, 64, 3)
  for split, items in want.items():
    src = builder.as_data_source(split)
    assert len(src) == len(items)
    records = {r["id"].decode(): r for r in (src[k] for k in range(len(src)))}
    for i, (objects, caption, _) in enumerate(items):
      r = records[f"{split}_{i:06d}"]
      assert np.array_equal(r["image"], shapes.render(objects, 64))
      assert [x.decode() for x in r["captions"]] == [caption] and len(r["questions"]) == 0
  captions = [caption for _, caption, _ in want["test"]]
  prompts, trial_image, candidates, labels = shapes_dataset.zero_shot_trials(cfg, captions)
  assert len(labels) == sum(len(t2i.parse_prompt(x).objects) for x in captions)
  assert all(" to the left of " in t or " above " in t for t in shapes_dataset.SOURCE.vocabulary_texts(cfg)[-2:])
