"""Tests for mmjax.data: shapes scenes, TFDS builders, manifests and the grain pipeline."""

import hashlib
import json
import logging
import math
import os
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax.data import batching, manifest as manifest_lib, pipeline, prepare, tfds_builders
from mmjax.data.examples import CAPTION_PROMPT, TASK_CAPTION, TASK_NAMES, TASK_VQA
from mmjax.projects.shapes import data as shapes_dataset, scenes as shapes
from mmjax.sample import predict

# ------------------------------------------------------------------------------------------------
# Scenes


def test_scene_deterministic_and_seed_dependent():
  a = shapes.generate_scene([3, 0, 7])
  b = shapes.generate_scene([3, 0, 7])
  c = shapes.generate_scene([3, 0, 8])
  assert a.objects == b.objects and np.array_equal(a.image, b.image)
  assert (a.caption, a.questions, a.answers) == (b.caption, b.questions, b.answers)
  assert a.objects != c.objects


@pytest.mark.parametrize("image_size,num_shapes", [(64, 3), (96, 2), (128, 3)])
def test_scene_objects_colours_and_overlap(image_size, num_shapes):
  for i in range(30):
    s = shapes.generate_scene([0, 0, i], image_size, num_shapes)
    assert s.image.shape == (image_size, image_size, 3) and s.image.dtype == np.uint8
    assert sorted(o.color for o in s.objects) == sorted(shapes.COLORS)
    assert {o.shape for o in s.objects} <= set(shapes.SHAPES[:num_shapes])
    masks = [shapes.object_mask(o, image_size) for o in s.objects]
    assert (np.sum(masks, axis=0) <= 1).all()  # non-overlapping
    for o, m in zip(s.objects, masks):
      assert m.sum() > 10
      assert tuple(s.image[o.y, o.x]) == shapes.COLOR_RGB[o.color]
      assert (s.image[m] == shapes.COLOR_RGB[o.color]).all()
    assert (s.image[~np.any(masks, axis=0)] == shapes.BACKGROUND).all()


def test_scene_questions_counts_and_vocabulary():
  vocab = set()
  for t in shapes.vocabulary_texts():
    vocab |= set(t.replace("?", " ").split())
  answers = set(shapes.COLORS) | set(shapes.SHAPES) | {"yes", "no"} | set(shapes.NUMBER_WORDS)
  for i in range(50):
    s = shapes.generate_scene([1, 0, i], questions_per_type={"attribute": 1, "spatial": 3, "relational": 5})
    assert s.question_types == ["attribute"] + ["spatial"] * 3 + ["relational"] * 5
    assert len(set(s.questions)) == len(s.questions)
    for text in s.questions + s.answers + [s.caption]:
      assert text == text.lower()
      assert set(text.replace("?", " ").replace(",", " ").split()) <= vocab, text
    assert set(s.answers) <= answers
    assert all(len(a.split()) == 1 for a in s.answers)


def test_question_template_recovers_every_generator_template():
  assert (
    shapes.question_template("what color is the circle at the top left?") == "what color is the <shape> at the <pos>?"
  )
  assert (
    shapes.question_template("what color is the square at the center?") == "what color is the <shape> at the <pos>?"
  )
  assert shapes.question_template("how many objects are triangles?") == "how many objects are <shape>?"
  assert shapes.question_template("is the gray object on the top?") == "is the <color> object on the top?"
  assert shapes.question_template("describe the image") == "describe the image"
  templates = {
    t.replace("{color}", "<color>").replace("{shape}", "<shape>").replace("{pos}", "<pos>")
    for t in shapes.ATTRIBUTE_TEMPLATES + shapes.SPATIAL_TEMPLATES + shapes.RELATIONAL_TEMPLATES
  }
  seen = set()
  for i in range(60):
    seen |= {shapes.question_template(q) for q in shapes.generate_scene([3, 0, i]).questions}
  assert seen == templates


# Independent answer oracle: parses the question and brute-forces the answer from the objects.
def _oracle(q, objs, size):
  cen = {o.color: ((o.x + 0.5) / size, (o.y + 0.5) / size) for o in objs}
  by = {o.color: o for o in objs}

  def dist(a, b):
    return math.hypot(cen[a][0] - cen[b][0], cen[a][1] - cen[b][1])

  def pos(o):
    fx, fy = cen[o.color]
    row = ["top", "", "bottom"][min(2, int(fy * 3))]
    col = ["left", "", "right"][min(2, int(fx * 3))]
    return " ".join(w for w in (row, col) if w) or "center"

  if m := re.fullmatch(r"what shape is the (\w+) object\?", q):
    return by[m[1]].shape
  if m := re.fullmatch(r"what color is the object at the ([\w ]+)\?", q):  # training-only "position"
    hits = [o for o in objs if pos(o) == m[1]]
    assert len(hits) == 1, q
    return hits[0].color
  if m := re.fullmatch(r"what color is the (\w+) at the ([\w ]+)\?", q):
    hits = [o for o in objs if o.shape == m[1] and pos(o) == m[2]]
    assert len(hits) == 1, q
    return hits[0].color
  if m := re.fullmatch(r"is the (\w+) object on the (left|right|top|bottom)\?", q):
    fx, fy = cen[m[1]]
    return "yes" if {"left": fx < 0.5, "right": fx > 0.5, "top": fy < 0.5, "bottom": fy > 0.5}[m[2]] else "no"
  if m := re.fullmatch(r"what (shape|color) is the object (closest to|furthest from) the (\w+) object\?", q):
    others = [c for c in cen if c != m[3]]
    ds = sorted(dist(m[3], c) for c in others)
    target = ds[0] if m[2] == "closest to" else ds[-1]
    best = [c for c in others if dist(m[3], c) == target]
    assert len(best) == 1, q  # never asked when tied
    return best[0] if m[1] == "color" else by[best[0]].shape
  if m := re.fullmatch(r"how many objects have the same shape as the (\w+) object\?", q):
    n = sum(o.shape == by[m[1]].shape for o in objs)
    return ["zero", "one", "two", "three", "four", "five", "six"][n]
  # Training-only (auxiliary) templates.
  if m := re.fullmatch(r"is the (\w+) object on the (left or the right|top or the bottom)\?", q):
    fx, fy = cen[m[1]]
    return ("left" if fx < 0.5 else "right") if m[2].startswith("left") else ("top" if fy < 0.5 else "bottom")
  if m := re.fullmatch(r"how many objects are (\w+)s\?", q):
    return ["zero", "one", "two", "three", "four", "five", "six"][sum(o.shape == m[1] for o in objs)]
  raise AssertionError(f"unknown template: {q}")


def test_answers_match_independent_oracle():
  templates = set()
  for i in range(300):
    s = shapes.generate_scene([5, 0, i], 64, 3, {"attribute": 2, "spatial": 4, "relational": 8})
    for q, a in zip(s.questions, s.answers):
      assert _oracle(q, s.objects, 64) == a, (q, a, s.objects)
      templates.add(re.sub(r"\b(red|green|blue|orange|gray|yellow)\b", "{color}", q))
  for t in shapes.RELATIONAL_TEMPLATES + shapes.SPATIAL_TEMPLATES + shapes.ATTRIBUTE_TEMPLATES[:1]:
    assert t in templates, t


def test_auxiliary_questions_follow_the_scored_ones_and_match_the_oracle():
  aux = {"side": 2, "spatial_lean": 2, "count": 1, "position": 1}
  lean_asks, side_words, counts, positions = set(), set(), set(), set()
  for i in range(200):
    plain = shapes.generate_scene([6, 0, i])
    s = shapes.generate_scene([6, 0, i], auxiliary_per_type=aux)
    n = len(plain.questions)
    # The scored questions are exactly those of the scene without auxiliary questions.
    assert (s.questions[:n], s.answers[:n], s.question_types[:n]) == (
      plain.questions,
      plain.answers,
      plain.question_types,
    )
    words = [shapes.position_word(o, 64) for o in s.objects]
    lone = any(words.count(w) == 1 for w in words)  # else no position question can be asked
    assert s.question_types[n:] == ["side"] * 2 + ["spatial_lean"] * 2 + ["count"] + ["position"] * lone
    assert len(set(s.questions)) == len(s.questions)
    for q, a, kind in zip(s.questions[n:], s.answers[n:], s.question_types[n:]):
      assert _oracle(q, s.objects, 64) == a, (q, a, s.objects)
      if kind == "spatial_lean":
        lean_asks.add(q.split()[-1])
      side_words.add(a) if kind == "side" else counts.add(a) if kind == "count" else None
      if kind == "position":
        positions.add(q.split(" at the ")[1])
  assert lean_asks == {"left?", "top?"}  # never right/bottom: that is the point of the kind
  assert side_words == {"left", "right", "top", "bottom"}
  assert len(counts) >= 3
  assert len(positions) == 9  # every position word is asked about


def test_auxiliary_question_kind_errors():
  with pytest.raises(ValueError, match="unknown auxiliary question types.*'where'"):
    shapes.generate_scene([0, 0, 0], auxiliary_per_type={"where": 1})
  with pytest.raises(ValueError, match="train_auxiliary_questions.*'where'"):
    shapes_dataset.shapes_config(train_auxiliary_questions={"where": 1})
  with pytest.raises(ValueError, match="train_auxiliary_questions.*>= 0"):
    shapes_dataset.shapes_config(train_auxiliary_questions={"side": -1})


def test_caption_matches_objects():
  s = shapes.generate_scene([0, 0, 0])
  parts = s.caption.split(", ")
  assert len(parts) == 6
  for part, color in zip(parts, shapes.COLORS):
    o = next(o for o in s.objects if o.color == color)
    assert part == f"{'an' if color == 'orange' else 'a'} {color} {o.shape} at the " + shapes.position_word(o, 64)


# ------------------------------------------------------------------------------------------------
# TFDS shapes


def _cfg(data_dir, **data):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 8
  c.data = shapes_dataset.default_data_config()
  c.data.data_dir = str(data_dir)
  c.data.shapes.train_scenes, c.data.shapes.validation_scenes, c.data.shapes.test_scenes = 24, 5, 5
  c.data.vocab_size = 400
  # Keys of the shapes block go there; the rest are the library's data keys.
  c.data.shapes.update({k: v for k, v in data.items() if k in c.data.shapes})
  c.data.update({k: v for k, v in data.items() if k not in c.data.shapes})
  return c


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
  d = tmp_path_factory.mktemp("shapes_tfds")
  cfg = _cfg(d)
  builder, tok = prepare.prepare(cfg)
  return cfg, builder, tok


def test_shapes_build_and_read(shapes_data):
  cfg, builder, tok = shapes_data
  assert tfds_builders.split_sizes(builder) == {"train": 24, "validation": 5, "test": 5}
  assert "s64_k3_n24-5-5_q2-2-4_seed0" in str(builder.data_dir)
  assert os.path.exists(prepare.tokenizer_path(builder))
  hashes = {}
  for split in ("train", "validation", "test"):
    src = builder.as_data_source(split)
    for i in range(len(src)):
      r = src[i]
      split_name, idx = r["id"].decode().rsplit("_", 1)
      scene = shapes.generate_scene(shapes.scene_seed(0, split_name, int(idx)))
      assert split_name == split
      assert np.array_equal(r["image"], scene.image)
      assert [q.decode() for q in r["questions"]] == scene.questions
      assert [a.decode() for a in r["answers"]] == scene.answers
      assert [c.decode() for c in r["captions"]] == [scene.caption]
      h = hashlib.sha256(r["image"].tobytes()).hexdigest()
      assert h not in hashes, (split, hashes.get(h))
      hashes[h] = split
  # already prepared: no rebuild, same dir
  again = shapes_dataset.prepare_shapes(
    cfg.data.data_dir, shapes_dataset.shapes_config(train_scenes=24, validation_scenes=5, test_scenes=5)
  )
  assert again.data_dir == builder.data_dir


def test_shapes_config_names_differ():
  a = shapes_dataset.shapes_config(image_size=64)
  b = shapes_dataset.shapes_config(image_size=96)
  c = shapes_dataset.shapes_config(num_shapes=2)
  d = shapes_dataset.shapes_config(questions_per_type={"relational": 1})
  e = shapes_dataset.shapes_config(train_auxiliary_questions={"count": 1})
  assert len({a.name, b.name, c.name, d.name, e.name}) == 5
  # No auxiliary questions: the name datasets had before they existed.
  assert shapes_dataset.shapes_config(train_auxiliary_questions={"side": 0}).name == a.name
  assert e.name == "s64_k3_n12000-500-1000_q2-2-4_aux0-0-1_seed0"
  assert shapes_dataset.shapes_config(train_auxiliary_questions={"position": 2}).name == (
    "s64_k3_n12000-500-1000_q2-2-4_aux0-0-0-2_seed0"
  )


def test_auxiliary_questions_only_in_the_train_split(tmp_path):
  cfg = _cfg(tmp_path, train_scenes=6, validation_scenes=3, test_scenes=3)
  cfg.data.shapes.train_auxiliary_questions.side = 1
  cfg.data.shapes.train_auxiliary_questions.spatial_lean = 1
  builder = prepare.prepare_builder(cfg)
  assert "_aux1-1-0_" in str(builder.data_dir)
  for split in ("train", "validation", "test"):
    src = builder.as_data_source(split)
    for i in range(len(src)):
      kinds = [t.decode() for t in src[i]["question_types"]]
      if split == "train":
        assert kinds == ["attribute"] * 2 + ["spatial"] * 2 + ["relational"] * 4 + ["side", "spatial_lean"]
      else:
        assert set(kinds) <= set(shapes.QUESTION_KINDS), (split, kinds)


# ------------------------------------------------------------------------------------------------
# Pipeline

KEYS = {
  "image": np.uint8,
  "prompt": np.int32,
  "prompt_len": np.int32,
  "target_in": np.int32,
  "target_out": np.int32,
  "target_mask": np.float32,
  "task": np.int32,
  "qtype": np.int32,
  "example_id": np.int32,
  "valid": np.bool_,
}


def test_pipeline_batches(shapes_data):
  cfg, builder, tok = shapes_data
  data = prepare.load_split(cfg, "train", tok, builder)
  assert len(data) == 24 * (8 + 1)
  it = batching.train_batches(cfg, data)
  tasks = set()
  for _ in range(18):  # one batch in 9 is a caption batch (24 captions, 192 questions)
    batch = next(it)
    assert set(batch) == set(KEYS)
    for k, dt in KEYS.items():
      assert batch[k].dtype == dt, k
    task = int(batch["task"][0])
    tasks.add(task)
    assert (batch["task"] == task).all()  # one task per batch, targets as long as its longest
    b, lp, lt = 8, cfg.data.max_prompt_len, data.target_length(task)
    assert lt <= cfg.data.max_target_len
    assert batch["image"].shape == (b, 64, 64, 3)
    assert batch["prompt"].shape == (b, lp) and batch["target_in"].shape == (b, lt)
    assert batch["target_out"].shape == batch["target_mask"].shape == (b, lt)
    assert batch["valid"].all()
    for i in range(b):
      eid = int(batch["example_id"][i])
      n = int(batch["target_mask"][i].sum())
      assert batch["target_in"][i, 0] == tok.bos_id
      assert batch["target_out"][i, n - 1] == tok.eos_id
      assert (batch["target_in"][i, 1:n] == batch["target_out"][i, : n - 1]).all()
      assert (batch["target_out"][i, n:] == 0).all() and (batch["target_in"][i, n:] == 0).all()
      assert tok.decode(batch["prompt"][i]) == data.prompt_text(eid)
      assert int(batch["prompt_len"][i]) == len(tok.encode(data.prompt_text(eid)))
      ref = data.references(eid)
      if task == TASK_VQA:
        assert tok.decode(batch["target_out"][i]) == ref
        assert data.question_types[batch["qtype"][i]] in ("attribute", "spatial", "relational")
      else:
        assert tok.decode(batch["target_out"][i]) in ref
        assert data.question_types[batch["qtype"][i]] == "caption"
        assert tok.decode(batch["prompt"][i]) == CAPTION_PROMPT
      rec = builder.as_data_source("train")[int(data.index[eid][0])]
      assert np.array_equal(batch["image"][i], rec["image"])
  assert tasks == {TASK_VQA, TASK_CAPTION}


def test_pipeline_no_captions(shapes_data):
  cfg, builder, tok = shapes_data
  cfg = cfg.copy_and_resolve_references()
  cfg.data.captions = False
  data = prepare.load_split(cfg, "train", tok, builder)
  assert len(data) == 24 * 8 and (data.task == TASK_VQA).all()


def test_truncation_is_reported_with_the_flag(shapes_data, caplog):
  cfg, builder, tok = shapes_data
  prompts = {q for r in prepare.load_split(cfg, "train", tok, builder).records for q in r["questions"]}
  prompts.add(CAPTION_PROMPT)
  longest = max(len(tok.encode(q)) for q in prompts)
  # Arrays that fit every question and caption: nothing to report.
  with caplog.at_level(logging.WARNING):
    prepare.load_split(cfg, "train", tok, builder)
  assert "truncated" not in caplog.text
  cut = cfg.copy_and_resolve_references()
  cut.data.max_prompt_len, cut.data.max_target_len = longest - 1, 8
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    data = prepare.load_split(cut, "train", tok, builder)
  too_long = {q for q in prompts if len(tok.encode(q)) > longest - 1}
  assert data.truncated["prompt"] == too_long and too_long
  assert data.truncated["target"] == {c for r in data.records for c in r["captions"]}  # answers fit in 7
  assert f"{len(too_long)} distinct prompts are longer than the {longest - 1} tokens" in caplog.text
  assert "config.data.max_prompt_len" in caplog.text and "config.data.max_target_len" in caplog.text


def test_grain_state_resumes_exactly(shapes_data):
  cfg, builder, tok = shapes_data
  data = prepare.load_split(cfg, "train", tok, builder)
  it = batching.train_batches(cfg, data)
  for _ in range(5):
    next(it)
  state = it.get_state()
  cont = [next(it) for _ in range(30)]  # crosses epochs (24 VQA and 3 caption batches per epoch)
  it2 = batching.train_batches(cfg, data)
  it2.set_state(state)
  for a in cont:
    b = next(it2)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # The same config gives the same order; each task's order is shuffled and covers its examples
  # once per epoch (24 VQA batches of 8 of the 192 questions).
  np.testing.assert_array_equal(
    next(batching.train_batches(cfg, data))["example_id"], next(batching.train_batches(cfg, data))["example_id"]
  )
  fresh, ids = batching.train_batches(cfg, data), []
  while len(ids) < 24:
    batch = next(fresh)
    if batch["task"][0] == TASK_VQA:
      ids.append(batch["example_id"])
  ids = np.concatenate(ids)
  vqa = np.flatnonzero(data.task == TASK_VQA)
  assert sorted(ids.tolist()) == vqa.tolist()
  assert ids.tolist() != vqa.tolist()


def test_processes_load_their_rows_of_one_stream(shapes_data):
  cfg, builder, tok = shapes_data
  data = prepare.load_split(cfg, "train", tok, builder)
  whole = batching.train_batches(cfg, data)
  halves = [batching.train_batches(cfg, data, process_index=p, process_count=2) for p in range(2)]
  for _ in range(6):
    b, parts = next(whole), [next(h) for h in halves]
    assert parts[0]["image"].shape[0] == cfg.batch_size // 2
    for k in b:
      np.testing.assert_array_equal(b[k], np.concatenate([p[k] for p in parts]))
  with pytest.raises(ValueError, match="process_index 2 not in"):
    batching.train_batches(cfg, data, process_index=2, process_count=2)


def test_eval_shards_disjoint_and_cover(shapes_data):
  """Same number of batches per process; the valid examples cover the split exactly once."""
  cfg, builder, tok = shapes_data
  vdata = prepare.load_split(cfg, "validation", tok, builder)
  got, nb = [], set()
  for p in range(2):
    batches = list(batching.eval_batches(vdata, 8, process_index=p, process_count=2))
    nb.add(len(batches))
    for b in batches:
      assert b["image"].shape[0] == 4
      got += b["example_id"][b["valid"]].tolist()
      assert (b["example_id"][~b["valid"]] == -1).all()
      assert (b["target_mask"][~b["valid"]] == 0).all()
  assert len(nb) == 1
  assert sorted(got) == list(range(len(vdata)))


def test_eval_not_shuffled_padded(shapes_data):
  cfg, builder, tok = shapes_data
  data = prepare.load_split(cfg, "test", tok, builder)
  batches = list(batching.eval_batches(data, 8))
  assert len(batches) == math.ceil(len(data) / 8)
  ids = np.concatenate([b["example_id"] for b in batches])
  valid = np.concatenate([b["valid"] for b in batches])
  # In order within a task, VQA first: a batch of short answers stops decoding after a few tokens.
  assert ids[valid].tolist() == np.argsort(data.task, kind="stable").tolist()
  assert all(b["image"].shape[0] == 8 for b in batches)
  assert len(list(batching.eval_batches(data, 8, max_examples=3))) == 1


# ------------------------------------------------------------------------------------------------
# Manifests


def _write_images(d):
  (d / "imgs").mkdir(parents=True)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / "imgs/rgb.png")
  Image.fromarray(rng.integers(0, 255, (20, 30, 4), dtype=np.uint8), "RGBA").save(d / "imgs/rgba.png")
  Image.fromarray(rng.integers(0, 255, (50, 100), dtype=np.uint8), "L").save(d / "imgs/gray.jpg")
  for i in range(7):
    Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(d / f"imgs/x{i}.png")
  (d / "imgs/broken.png").write_bytes(b"not an image")


GOOD_LINES = [
  {"image": "imgs/rgb.png", "question": "what is it?", "answer": "noise"},
  {"image": "imgs/rgb.png", "caption": "colourful noise"},
  {"image": "imgs/rgba.png", "question": "is it transparent?", "answer": "partly", "split": "validation"},
  {"image": "imgs/gray.jpg", "caption": "grey static", "split": "test"},
  {"image": "imgs/gray.jpg", "caption": "a noisy grey picture"},
] + [{"image": f"imgs/x{i}.png", "question": "how bright?", "answer": str(i)} for i in range(7)]


def _write_manifest(d, lines, name="manifest.jsonl"):
  p = d / name
  p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return p


def test_manifest_builds_and_reads(tmp_path):
  src = tmp_path / "src"
  _write_images(src)
  m = _write_manifest(src, GOOD_LINES)
  data_dir = tmp_path / "data"
  builder = tfds_builders.prepare_manifest(str(m), str(data_dir), image_size=32)
  sizes = tfds_builders.split_sizes(builder)
  assert sum(sizes.values()) == 10  # grouped per image
  assert sizes["validation"] >= 1 and sizes["test"] >= 1
  recs = {}
  for split in ("train", "validation", "test"):
    ds = builder.as_data_source(split)
    for i in range(len(ds)):
      r = ds[i]
      assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
      recs[r["id"].decode()] = (split, r)
  assert recs["imgs/rgba.png"][0] == "validation"
  assert recs["imgs/gray.jpg"][0] == "test"
  r = recs["imgs/rgb.png"][1]
  assert [q.decode() for q in r["questions"]] == ["what is it?"]
  assert [q.decode() for q in r["question_types"]] == ["vqa"]
  assert [c.decode() for c in r["captions"]] == ["colourful noise"]
  g = recs["imgs/gray.jpg"][1]
  assert [c.decode() for c in g["captions"]] == ["grey static", "a noisy grey picture"]
  assert np.array_equal(g["image"], manifest_lib.load_image(str(src / "imgs/gray.jpg"), 32))
  # Sampling reads an image file to the same pixels as the dataset holds for it (it once resized
  # bicubically where training resized bilinearly), alpha included: against the prepared records.
  for name in ("imgs/gray.jpg", "imgs/rgba.png", "imgs/rgb.png"):
    assert np.array_equal(predict.load_image(str(src / name), 32), recs[name][1]["image"]), name
  assert (g["image"][..., 0] == g["image"][..., 1]).all()
  # Pipeline over the manifest (tokenizer trained on it).
  cfg = _cfg(data_dir, manifest=str(m), image_size=32)
  cfg.batch_size = 4
  data = prepare.load_split(cfg, "train")
  assert sorted(data.question_types[q] for q in set(data.qtype.tolist())) <= ["caption", "vqa"]
  batch = next(batching.train_batches(cfg, data))
  assert batch["image"].shape == (4, 32, 32, 3)
  tok = data.tokenizer
  for i in range(4):
    eid = int(batch["example_id"][i])
    ref = data.references(eid)
    out = tok.decode(batch["target_out"][i])
    assert out == ref if isinstance(ref, str) else out in ref
  # A changed manifest goes to a new directory.
  m2 = _write_manifest(src, GOOD_LINES[:-1])
  b2 = tfds_builders.prepare_manifest(str(m2), str(data_dir), image_size=32)
  assert b2.data_dir != builder.data_dir
  assert sum(tfds_builders.split_sizes(b2).values()) == 9


BAD = [
  ("{not json", None, "invalid JSON"),
  ({"image": "imgs/missing.png", "caption": "x"}, "image", "not found"),
  ({"image": "imgs/broken.png", "caption": "x"}, "image", "cannot read"),
  ({"caption": "x"}, "image", "missing"),
  ({"image": "imgs/rgb.png", "question": "q?"}, "answer", "without answer"),
  ({"image": "imgs/rgb.png", "answer": "a"}, "question", "without question"),
  ({"image": "imgs/rgb.png", "question": "  ", "answer": "a"}, "question", "empty"),
  ({"image": "imgs/rgb.png", "question": "q?", "answer": ""}, "answer", "empty"),
  ({"image": "imgs/rgb.png", "caption": ""}, "caption", "empty"),
  ({"image": "imgs/rgb.png", "caption": "x", "colour": "red"}, "colour", "unknown key"),
  ({"image": "imgs/rgb.png", "caption": "x", "split": "dev"}, "split", "not one of"),
  ({"image": "imgs/rgb.png", "caption": "x", "split": "test"}, "split", "already assigned"),
  ({"image": "imgs/rgb.png"}, "question", "neither"),
  ({"image": 3, "caption": "x"}, "image", "string"),
]


@pytest.mark.parametrize("line,key,msg", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_manifest_bad_inputs(tmp_path, line, key, msg):
  src = tmp_path / "src"
  _write_images(src)
  first = {"image": "imgs/rgb.png", "caption": "ok", "split": "train"}
  m = _write_manifest(src, [first, GOOD_LINES[2], line] + GOOD_LINES[5:])
  assert_line_3_error(m, tmp_path / "data", key, msg)


def test_manifest_empty_split_builds_the_others(tmp_path, tiny_config):
  """No "test" records: the other splits build; asking for test (or training, which ends with a test
  evaluation) is an error naming the split and the manifest, raised before anything trains."""
  src = tmp_path / "src"
  _write_images(src)
  lines = [
    dict(l, split="validation" if "rgba" in l["image"] else "train") for l in GOOD_LINES if "gray" not in l["image"]
  ]
  m = _write_manifest(src, lines)
  data_dir = tmp_path / "data"
  builder = tfds_builders.prepare_manifest(str(m), str(data_dir), image_size=32)
  assert tfds_builders.split_sizes(builder) == {"train": 8, "validation": 1}
  cfg = _cfg(data_dir, manifest=str(m), image_size=32)
  assert len(prepare.load_split(cfg, "validation")) == 1
  for ask in (lambda: prepare.load_split(cfg, "test"), lambda: pipeline.Data(cfg).split("test")):
    with pytest.raises(ValueError, match=r"split 'test' has no records in the manifest") as e:
      ask()
    assert str(m) in str(e.value) and "records per split: train 8, validation 1" in str(e.value)
    assert '"split": "test"' in str(e.value)

  # Training fails at the start, not after its steps: the final evaluation reads the test split.
  tiny_config.data.update(dict(manifest=str(m), data_dir=str(data_dir), image_size=32))
  from mmjax.train import trainer

  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=r"split 'test' has no records .*the final test evaluation needs it"):
    trainer.train_and_evaluate(tiny_config, str(workdir), progress=False)
  assert not (workdir / "checkpoints").exists() and not (workdir / "metrics.jsonl").exists()


def test_manifest_tiny_auto_split_is_all_train(tmp_path, tiny_config):
  """Five images without a split all go to train (80/10/10 rounds to 5/0/0): with one explicit test
  image the dataset has no validation split, and a run that evaluates on validation says so before
  training, naming the config key that skips that evaluation."""
  src = tmp_path / "src"
  _write_images(src)
  m = _write_manifest(
    src,
    [{"image": f"imgs/x{i}.png", "caption": f"shade {i}"} for i in range(5)]
    + [{"image": "imgs/x5.png", "caption": "shade 5", "split": "test"}],
  )
  data_dir = tmp_path / "data"
  assert tfds_builders.split_sizes(tfds_builders.prepare_manifest(str(m), str(data_dir))) == {"train": 5, "test": 1}
  from mmjax.train import trainer

  tiny_config.data.update(dict(manifest=str(m), data_dir=str(data_dir)))
  data = pipeline.Data(tiny_config)
  with pytest.raises(
    ValueError,
    match=r"split 'validation' has no records in the manifest .*config.eval_every=3 "
    r"steps \(set it to 0 to train without it\)",
  ):
    trainer._check_eval_splits(tiny_config, data)
  for no_validation in (0, tiny_config.total_steps):
    tiny_config.eval_every = no_validation
    trainer._check_eval_splits(tiny_config, data)  # no validation evaluation: nothing missing


def test_manifest_without_train_records(tmp_path):
  src = tmp_path / "src"
  _write_images(src)
  m = _write_manifest(
    src,
    [
      {"image": "imgs/rgb.png", "caption": "noise", "split": "validation"},
      {"image": "imgs/rgba.png", "caption": "see-through", "split": "test"},
      {"image": "imgs/gray.jpg", "caption": "grey static", "split": "test"},
    ],
  )
  data_dir = tmp_path / "data"
  with pytest.raises(
    ValueError, match=r"no records in the 'train' split \(images per split: validation 1, test 2\)"
  ) as e:
    tfds_builders.prepare_manifest(str(m), str(data_dir))
  assert str(e.value).startswith(f"{m}: ") and '"split": "train"' in str(e.value)
  assert not data_dir.exists() or not any(data_dir.rglob("*"))


def assert_line_3_error(manifest, data_dir, key, msg, **prepare_kwargs):
  """prepare_manifest fails naming line 3 of ``manifest``, ``key`` and ``msg``; no data left."""
  with pytest.raises(ValueError) as e:
    tfds_builders.prepare_manifest(str(manifest), str(data_dir), **prepare_kwargs)
  text = str(e.value)
  assert f"{manifest}:3" in text, text
  if key:
    assert f"key '{key}'" in text, text
  assert msg in text, text
  assert not data_dir.exists() or not any(data_dir.rglob("*"))


def assert_generation_failure_cleans_up(manifest, data_dir, monkeypatch, loader, **prepare_kwargs):
  """A failure of ``manifest_lib.<loader>`` while records are written leaves no data behind."""

  def boom(*a, **k):
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(manifest_lib, loader, boom)
  with pytest.raises(RuntimeError):
    tfds_builders.prepare_manifest(str(manifest), str(data_dir), **prepare_kwargs)
  assert not data_dir.exists() or not any(data_dir.rglob("*"))


def test_manifest_generation_failure_cleans_up(tmp_path, monkeypatch):
  src = tmp_path / "src"
  _write_images(src)
  assert_generation_failure_cleans_up(_write_manifest(src, GOOD_LINES), tmp_path / "data", monkeypatch, "load_image")


def test_generation_failure_spares_other_files_in_data_dir(tmp_path, monkeypatch):
  """data_dir may be shared: files another process writes there during a failed build survive."""
  src, data_dir = tmp_path / "src", tmp_path / "data"
  _write_images(src)
  manifest = _write_manifest(src, GOOD_LINES)

  def boom(*a, **k):
    (data_dir / "other_dataset").mkdir(parents=True, exist_ok=True)
    (data_dir / "other_dataset" / "records").write_text("not ours")
    raise RuntimeError("disk on fire")

  monkeypatch.setattr(manifest_lib, "load_image", boom)
  with pytest.raises(RuntimeError):
    tfds_builders.prepare_manifest(str(manifest), str(data_dir))
  assert (data_dir / "other_dataset" / "records").read_text() == "not ours"
  assert not (data_dir / "mmjax_manifest").exists()


def test_task_weights_set_the_share_of_caption_batches(tiny_config):
  """data.task_weights scales each task's share of the train batches: examples x weight."""
  data = pipeline.Data(tiny_config)
  train = data.split("train")
  n_vqa = int((train.task == TASK_NAMES.index("vqa")).sum())
  n_cap = int((train.task == TASK_NAMES.index("caption")).sum())
  assert n_vqa > 0 and n_cap > 0

  def caption_share(weights, batches=60):
    tiny_config.data.task_weights = ml_collections.ConfigDict(weights)
    it = data.train_iterator()
    tasks = [int(next(it)["task"][0]) for _ in range(batches)]  # batches are single-task
    return tasks.count(TASK_NAMES.index("caption")) / batches

  for w in (1.0, 4.0):
    expected = n_cap * w / (n_vqa + n_cap * w)
    assert abs(caption_share({"caption": w}) - expected) < 0.1, (w, expected)
  assert caption_share({"vqa": 0.0}) == 1.0
  assert caption_share({"caption": 0.0}) == 0.0


@pytest.mark.parametrize(
  "weights,match",
  [
    ({"captions": 2.0}, r"task_weights has unknown tasks \['captions'\]"),
    ({"caption": -1.0}, r"task_weights.caption=-1.0: a weight must be a number >= 0"),
    ({"vqa": "many"}, r"task_weights.vqa='many'"),
    ({"vqa": float("nan")}, r"task_weights.vqa=nan"),
  ],
)
def test_task_weights_errors_name_the_key(tiny_config, weights, match):
  tiny_config.data.task_weights = ml_collections.ConfigDict(weights)
  with pytest.raises(ValueError, match=match):
    pipeline.Data(tiny_config).train_iterator()
