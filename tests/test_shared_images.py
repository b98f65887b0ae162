"""Several questions per image (config.data.questions_per_image): the batches, the model that encodes
each image once for its questions, grouped cross-attention, gradient accumulation, config errors."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import config_files, layers
from mmjax.attention import MaskSpec
from mmjax.data import pipeline
from mmjax.data.config import CAPTION_FIELDS, stream_fields
from mmjax.data.examples import CAPTION_PROMPT, TASK_NAMES, TASK_VQA
from mmjax.encoders.vit import ViT
from mmjax.layers import pixel_coordinates
from mmjax.models import build_model, vlm
from mmjax.train import batches as batches_lib, state as state_lib, step as step_lib
from tests.conftest import CONFIGS
from tests.sharding_entry import V, batches
from tests.test_knobs import rel_err

ARGS = ("image", "prompt", "prompt_len", "target_in")


def prefix_config(**model):
  """The tiny model with the question in the decoder's prefix (memory = image alone)."""
  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  c.model.attention_implementation = "xla"
  c.model.fusion.update(dict(text_as="prefix", fuse_depth=0))
  c.model.decoder.max_len = c.data.max_prompt_len + c.data.max_target_len
  c.model.update(model)
  return c


def grouped_batch(config, images=4, per_image=4, seed=0):
  """A random batch of images x per_image prompts: "image" keeps one row per image."""
  b = batches(config, n=1, b=images * per_image, seed=seed)[0]
  b["image"] = b["image"][::per_image]
  return b


def test_grouped_cross_attention_equals_repeated_memory():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(6, 5, 16)), jnp.float32)  # 3 query rows per memory row
  kv = jnp.asarray(rng.normal(size=(2, 7, 16)), jnp.float32)
  kv_len = np.array([7, 4], np.int32)  # the second memory is padded
  attn = layers.MultiHeadAttention(num_heads=2, head_dim=8, implementation="xla")
  params = attn.init(jax.random.key(0), x, kv=jnp.repeat(kv, 3, 0))
  grouped = attn.apply(params, x, kv=kv, mask=MaskSpec(kv_valid_len=jnp.asarray(kv_len)))
  repeated = attn.apply(
    params, x, kv=jnp.repeat(kv, 3, 0), mask=MaskSpec(kv_valid_len=jnp.asarray(np.repeat(kv_len, 3)))
  )
  assert grouped.shape == (6, 5, 16)
  assert rel_err(grouped, repeated) < 1e-6
  # Padded memory is never read: changing it changes nothing.
  kv2 = kv.at[1, 4:].set(100.0)
  again = attn.apply(params, x, kv=kv2, mask=MaskSpec(kv_valid_len=jnp.asarray(kv_len)))
  assert rel_err(again, grouped) < 1e-6
  with pytest.raises(ValueError, match="multiple of the memory batch"):
    attn.apply(params, x[:5], kv=kv)


def test_model_encodes_each_image_once_for_its_questions():
  c = prefix_config()
  model = build_model(c.model, V)
  b = grouped_batch(c)
  args = [b[k] for k in ARGS]
  params = nn.meta.unbox(model.init(jax.random.key(0), *(a[:1] for a in args))["params"])
  shared = model.apply({"params": params}, *args)
  repeated = model.apply({"params": params}, np.repeat(b["image"], 4, 0), *args[1:])
  assert shared.shape == (16, c.data.max_target_len, V)
  assert rel_err(shared, repeated) < 1e-5
  # Rows of the same image differ where their questions differ, and each row reads its own image.
  assert rel_err(shared[0], shared[1]) > 1e-3
  other = model.apply({"params": params}, b["image"][::-1], *args[1:])
  assert rel_err(other[:4], shared[:4]) > 1e-3


def test_shared_images_need_a_fusion_whose_memory_is_the_image():
  c = config_files.load(os.path.join(CONFIGS, "tiny.py"))  # text_as="memory": the question is in the memory
  c.model.attention_implementation = "xla"
  model = build_model(c.model, V)
  b = grouped_batch(c)
  with pytest.raises(ValueError, match=r"text_as='prefix'"):
    model.init(jax.random.key(0), *(b[k] for k in ARGS))
  with pytest.raises(ValueError, match="cannot share 4 images"):
    model.init(jax.random.key(0), b["image"], *(b[k][:10] for k in ARGS[1:]))


def test_grad_accumulation_keeps_questions_with_their_image():
  c = prefix_config()
  model = build_model(c.model, V)
  b = grouped_batch(c)
  params = nn.meta.unbox(model.init(jax.random.key(0), *(b[k][:1] for k in ARGS))["params"])
  grads, metrics = step_lib.grads_and_metrics(model, params, b)
  # The reference: the same loss with every question's image written out (no sharing).
  flat_batch = dict(b, image=np.repeat(b["image"], 4, 0))
  ref_grads, ref_metrics = step_lib.grads_and_metrics(model, params, flat_batch)
  assert rel_err(grads, ref_grads) < 1e-5
  for k in (2, 4):
    g, m = jax.jit(lambda p, x: step_lib.grads_and_metrics(model, p, x, k))(params, b)
    assert rel_err(g, ref_grads) < 1e-5
    np.testing.assert_allclose(m["loss"], ref_metrics["loss"], rtol=1e-5)
  with pytest.raises(ValueError, match="grad_accum_steps=3 does not divide the batch of 4 images"):
    step_lib.grads_and_metrics(model, params, b, 3)


def test_train_batches_group_questions_by_image(tiny_config):
  tiny_config.batch_size = 16
  tiny_config.data.questions_per_image = 4
  data = pipeline.Data(tiny_config)
  train = data.split("train")
  per_record = np.bincount(train.index[train.task == TASK_VQA, 0])
  it, it2 = data.train_iterator(), data.train_iterator()
  halves = [data.train_iterator(p, 2) for p in range(2)]
  vqa_batches = 0
  for _ in range(12):
    b, b2 = next(it), next(it2)
    parts = [next(h) for h in halves]
    for k in b:  # deterministic, and two processes together load exactly the one-process batch
      np.testing.assert_array_equal(b[k], b2[k])
      np.testing.assert_array_equal(b[k], np.concatenate([p[k] for p in parts]))
    if b["task"][0] != TASK_VQA:
      assert b["image"].shape[0] == b["prompt"].shape[0] == 4  # captions: one per image, as many images
      continue
    vqa_batches += 1
    assert b["image"].shape[0] == 4 and b["prompt"].shape[0] == 16
    for i in range(4):
      ids = b["example_id"][4 * i : 4 * i + 4]
      records = set(train.index[ids, 0].tolist())
      assert len(records) == 1  # the group asks about one image
      assert len(set(ids.tolist())) == min(4, per_record[records.pop()])  # no repeats while it has more
      np.testing.assert_array_equal(b["image"][i], train.example(int(ids[0]))["image"])
      for row, e in zip(range(4 * i, 4 * i + 4), ids):  # each row is that question's example
        ex = train.example(int(e))
        np.testing.assert_array_equal(b["prompt"][row], ex["prompt"])
        n = b["target_out"].shape[1]
        np.testing.assert_array_equal(b["target_out"][row], ex["target_out"][:n])
        assert ex["target_mask"][n:].sum() == 0
  assert vqa_batches >= 6


@pytest.mark.parametrize(
  "value,batch,match",
  [
    (3, 16, r"config.batch_size=16 is not a multiple of config.data.questions_per_image=3"),
    (0, 16, r"config.data.questions_per_image=0 must be an integer >= 1"),
  ],
)
def test_questions_per_image_errors_name_the_keys(tiny_config, value, batch, match):
  tiny_config.batch_size = batch
  tiny_config.data.questions_per_image = value
  with pytest.raises(ValueError, match=match):
    pipeline.Data(tiny_config).train_iterator()


@pytest.mark.devices(8)  # on fewer devices it runs in a child pytest on 8 simulated ones (tests/multidevice.py)
def test_image_batch_must_divide_over_the_mesh():
  assert jax.device_count() == 8, jax.devices()
  c = prefix_config()
  c.batch_size = 16
  c.data.questions_per_image = 4  # 4 images over 8 batch shards
  with pytest.raises(ValueError, match=r"train batches of 4 images \(with .*\), not divisible by the 8 batch shards"):
    state_lib.make_setup(c, V)
  c.batch_size = 32  # 8 images: one per device, each with its 4 questions
  setup = state_lib.make_setup(c, V)
  b = {k: v for k, v in grouped_batch(c, images=8).items() if k in vlm.BATCH_KEYS}
  sh = setup.batch_sharding(b)
  assert sh["image"].shard_shape(b["image"].shape)[0] == 1 and sh["prompt"].shard_shape(b["prompt"].shape)[0] == 4
  state = state_lib.init_state(setup, jax.random.key(0))
  step = step_lib.make_train_step(setup, b)
  with setup.context():
    state, m = step(state, b)
  # At initialisation the model predicts nearly uniformly over the V tokens: loss ln(V) (measured within
  # 0.2%). Sharding does not change what the jitted step computes; that sharing an image gives the loss of
  # writing it out per question is test_grad_accumulation_keeps_questions_with_their_image's check.
  assert float(m["loss"]) == pytest.approx(np.log(V), rel=0.01)


def test_coordinate_channels():
  coords = pixel_coordinates(2, 4)
  np.testing.assert_allclose(coords[..., 0], [[-0.75, -0.25, 0.25, 0.75]] * 2)  # x across columns
  np.testing.assert_allclose(coords[..., 1], [[-0.5] * 4, [0.5] * 4])  # y down rows
  vit = ViT(width=8, depth=0, num_heads=2, mlp_dim=8, patch_size=4, coord_channels=True)
  img = np.zeros((1, 8, 8, 3), np.uint8)
  params = vit.init(jax.random.key(0), img)["params"]
  assert nn.meta.unbox(params["patch_embed"]["kernel"]).shape[0] == 4 * 4 * 5  # 3 colours + x + y
  # A blank image: with learned positions zeroed, tokens still differ by where they are.
  params = dict(nn.meta.unbox(params))
  params["posemb"] = jnp.zeros_like(params["posemb"])
  tokens = np.asarray(vit.apply({"params": params}, img))
  assert np.linalg.norm(tokens[0, 0] - tokens[0, 3]) > 1e-3


def with_captions(b, images=4, seed=1, weight=1.0):
  """Adds random captions of the batch's images (CAPTION_KEYS) to a grouped batch."""
  rng = np.random.default_rng(seed)
  lp, lc = b["prompt"].shape[1], 12
  b = dict(b)
  b["caption_prompt"] = rng.integers(4, V, (images, lp)).astype(np.int32)
  b["caption_prompt_len"] = rng.integers(1, lp + 1, (images,)).astype(np.int32)
  b["caption_in"] = rng.integers(4, V, (images, lc)).astype(np.int32)
  b["caption_out"] = rng.integers(4, V, (images, lc)).astype(np.int32)
  b["caption_mask"] = (np.arange(lc)[None] < rng.integers(2, lc, (images, 1))).astype(np.float32) * weight
  return b


def test_captions_ride_along_with_the_questions():
  """The caption stream: each image's caption decoded off the one encoding of the images that its
  questions read, with the logits and losses that separate batches give."""
  c = prefix_config()
  model = build_model(c.model, V)
  b = with_captions(grouped_batch(c))
  params = nn.meta.unbox(model.init(jax.random.key(0), *(b[k][:1] for k in ARGS))["params"])
  logits = model.apply({"params": params}, b, method="stream_logits")
  assert set(logits) == {"", "caption"}
  assert rel_err(logits[""], model.apply({"params": params}, *(b[k] for k in ARGS))) < 1e-5
  ref = model.apply({"params": params}, b["image"], b["caption_prompt"], b["caption_prompt_len"], b["caption_in"])
  assert rel_err(logits["caption"], ref) < 1e-5
  # The loss counts answer and caption tokens alike (weighted by their masks), and microbatches agree.
  questions = {k: b[k] for k in vlm.BATCH_KEYS}
  captions = {"image": b["image"]} | {k: b[key] for k, key in vlm.stream_keys("caption").items()}
  loss_sums = lambda batch: model.apply({"params": params}, batch, method="loss_sums")
  (q_sum, q), (c_sum, c) = loss_sums(questions), loss_sums(captions)
  q_n, c_n = q["weight"], c["weight"]
  grads, metrics = step_lib.grads_and_metrics(model, params, b)
  np.testing.assert_allclose(metrics["loss"], (q_sum + c_sum) / (q_n + c_n), rtol=1e-5)
  # ... and are the sums of the same rows written out one image per row, in one batch.
  lt = max(b["target_in"].shape[1], b["caption_in"].shape[1])
  pad = lambda k, x: np.pad(x, [(0, 0), (0, lt - x.shape[1])]) if k.startswith("target_") else x
  flat = {"image": np.concatenate([np.repeat(b["image"], 4, 0), b["image"]])}
  flat |= {k: np.concatenate([pad(k, questions[k]), pad(k, captions[k])]) for k in vlm.STREAM_KEYS}
  flat_sum, flat_sums = loss_sums(flat)
  np.testing.assert_allclose(flat_sum, q_sum + c_sum, rtol=1e-5)
  np.testing.assert_allclose(flat_sums["weight"], q_n + c_n, rtol=1e-6)
  g2, m2 = jax.jit(lambda p, x: step_lib.grads_and_metrics(model, p, x, 2))(params, b)
  assert rel_err(g2, grads) < 1e-5
  # Caption tokens weighted 0.5 count half.
  half = dict(b, caption_mask=b["caption_mask"] * 0.5)
  _, m_half = step_lib.grads_and_metrics(model, params, half)
  np.testing.assert_allclose(m_half["loss"], (q_sum + 0.5 * c_sum) / (q_n + 0.5 * c_n), rtol=1e-5)
  # A stream's prompts read their images G consecutive rows each: 2 captions cannot share 4 images.
  cut = dict(b, **{k: b[k][:2] for k in vlm.stream_keys("caption").values()})
  with pytest.raises(ValueError, match="2 caption prompts cannot share 4 images"):
    model.apply({"params": params}, cut, method="loss_sums")


def test_the_caption_stream_is_the_datas_caption_fields():
  """The model's caption stream reads the keys the pipeline writes the captions to, and every task's
  stream (data.examples_per_image) the keys the pipeline writes that task's examples to."""
  assert {key: field for field, key in vlm.stream_keys("caption").items()} == CAPTION_FIELDS
  for task in TASK_NAMES:
    assert {key: field for field, key in vlm.stream_keys(task).items()} == stream_fields(task)
    assert vlm.text_streams(dict.fromkeys(vlm.BATCH_KEYS) | dict.fromkeys(stream_fields(task))) == ("", task)
  assert set(batches_lib.CAPTION_KEYS) == set(vlm.stream_keys("caption").values())


def test_train_batches_carry_their_images_captions(tiny_config):
  tiny_config.batch_size = 16
  tiny_config.data.questions_per_image = 4
  tiny_config.data.captions_with_questions = True
  tiny_config.data.task_weights.caption = 0.5
  data = pipeline.Data(tiny_config)
  train, tok = data.split("train"), data.tokenizer
  assert set(batches_lib.CAPTION_KEYS) <= set(batches_lib.batch_keys(tiny_config))
  it = data.train_iterator()
  for _ in range(6):
    b = next(it)
    assert (b["task"] == TASK_VQA).all()  # no caption batches: captions come with the questions
    assert b["caption_in"].shape[0] == b["image"].shape[0] == 4
    for i in range(4):
      record = train.records[int(train.index[b["example_id"][4 * i], 0])]
      mask = b["caption_mask"][i]
      assert set(np.unique(mask)) <= {0.0, 0.5}
      words = [int(t) for t, m in zip(b["caption_out"][i], mask) if m > 0][:-1]  # drop EOS
      assert tok.decode(words) in record["captions"]
      assert tok.decode([int(t) for t in b["caption_prompt"][i][: b["caption_prompt_len"][i]]]) == CAPTION_PROMPT
  tiny_config.data.questions_per_image = 1
  tiny_config.batch_size = 8
  with pytest.raises(ValueError, match="captions_with_questions=True .*questions_per_image > 1"):
    pipeline.Data(tiny_config).train_iterator()


def test_manifest_images_with_and_without_captions(tmp_path):
  """The default data settings on a manifest: images with questions only get an empty caption (no
  loss), images with captions only still get caption batches, and every batch trains."""
  from tests.test_data import _write_images, _write_manifest

  _write_images(tmp_path)
  lines = (
    [
      {"image": "imgs/rgb.png", "question": "what is it?", "answer": "noise", "split": "train"},
      {"image": "imgs/rgb.png", "caption": "colourful noise", "split": "train"},
      {"image": "imgs/x6.png", "question": "how bright?", "answer": "six", "split": "validation"},
      {"image": "imgs/rgba.png", "question": "is it see-through?", "answer": "partly", "split": "test"},
    ]
    + [{"image": f"imgs/x{i}.png", "question": "how bright?", "answer": str(i), "split": "train"} for i in range(4)]
    + [{"image": f"imgs/x{i}.png", "caption": f"a grey square number {i}", "split": "train"} for i in (4, 5)]
  )
  c = prefix_config()
  c.data.update(dict(manifest=str(_write_manifest(tmp_path, lines)), data_dir=str(tmp_path / "data"), image_size=32))
  c.batch_size, c.data.questions_per_image, c.data.captions_with_questions = 8, 2, True
  data = pipeline.Data(c)
  train = data.split("train")
  image_of = lambda e: train.records[int(train.index[int(e), 0])]["id"]
  it = data.train_iterator()
  setup = state_lib.make_setup(c, data.tokenizer.vocab_size, devices=jax.devices()[:1])
  state = state_lib.init_state(setup, jax.random.key(0))
  kinds, steps = set(), {}
  for _ in range(8):
    b = next(it)
    assert set(batches_lib.batch_keys(c)) <= set(b)
    if b["task"][0] == TASK_VQA:
      kinds.add("vqa")
      for i in range(4):
        has_caption = "rgb" in image_of(b["example_id"][2 * i])
        assert (b["caption_mask"][i].sum() > 0) == has_caption
    else:
      kinds.add("caption")
      assert all(image_of(e).startswith(("imgs/x4", "imgs/x5")) for e in b["example_id"])
      assert b["caption_mask"].sum() == 0 and b["image"].shape[0] == 4
    # One compiled step per batch kind (their shapes differ), as the trainer keeps them.
    kind = int(b["task"][0])
    if kind not in steps:
      steps[kind] = step_lib.make_train_step(setup, b)
    with setup.context():
      state, m = steps[kind](state, {k: b[k] for k in batches_lib.batch_keys(c)})
    assert np.isfinite(float(m["loss"]))
  assert kinds == {"vqa", "caption"}


def test_dummy_train_batch_has_the_pipelines_shapes():
  c = config_files.load(os.path.join(CONFIGS, "default.py"))
  b = batches_lib.dummy_train_batch(c)
  g = c.data.questions_per_image
  assert g > 1 and c.data.captions_with_questions  # the main job shares images (else this test is moot)
  assert b["image"].shape[0] == c.batch_size // g and b["prompt"].shape[0] == c.batch_size
  assert set(batches_lib.batch_keys(c)) <= set(b)
  assert all(b[k].shape[0] == c.batch_size // g for k in batches_lib.CAPTION_KEYS)
  tiny = config_files.load(os.path.join(CONFIGS, "tiny.py"))
  assert set(batches_lib.dummy_train_batch(tiny)) == set(vlm.BATCH_KEYS)


def test_grouped_iterator_state_resumes_exactly(tiny_config):
  tiny_config.batch_size = 16
  tiny_config.data.questions_per_image = 4
  tiny_config.data.captions_with_questions = True
  data = pipeline.Data(tiny_config)
  it = data.train_iterator()
  for _ in range(3):
    next(it)
  assert_resumes_exactly(data, it)


def assert_resumes_exactly(data, it, n=3):
  """The next n batches of train iterator `it` are those of a new iterator set to its state."""
  state = it.get_state()
  expected = [next(it) for _ in range(n)]
  resumed = data.train_iterator()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


# Several tasks per image (config.data.examples_per_image): one text stream per task off one encoding.


def test_examples_per_image_batches(tiny_config):
  """Every batch is images with 2 of their questions (the batch's own rows) and 1 of their captions
  (the caption stream, its tokens weighted 0.5), each row the example of its own image."""
  tiny_config.batch_size = 12
  tiny_config.data.examples_per_image.update(dict(vqa=2, caption=1))
  tiny_config.data.task_weights.caption = 0.5
  data = pipeline.Data(tiny_config)
  train, tok = data.split("train"), data.tokenizer
  per_record = np.bincount(train.index[train.task == TASK_VQA, 0])
  assert per_record.min() >= 2  # else rows repeat a question (cycled), which this test does not expect
  keys = set(batches_lib.batch_keys(tiny_config))
  assert set(batches_lib.CAPTION_KEYS) <= keys
  dummy = batches_lib.dummy_train_batch(tiny_config)
  it, it2 = data.train_iterator(), data.train_iterator()
  halves = [data.train_iterator(p, 2) for p in range(2)]
  for _ in range(5):
    b, b2 = next(it), next(it2)
    parts = [next(h) for h in halves]
    assert keys <= set(b) and all(b[k].shape[0] == dummy[k].shape[0] for k in keys)
    for k in b:  # deterministic, and two processes together load exactly the one-process batch
      np.testing.assert_array_equal(b[k], b2[k])
      np.testing.assert_array_equal(b[k], np.concatenate([p[k] for p in parts]))
    assert b["image"].shape[0] == 4 and b["prompt"].shape[0] == 8 and b["caption_in"].shape[0] == 4
    assert (b["task"] == TASK_VQA).all() and b["valid"].all()
    for i in range(4):
      ids = b["example_id"][2 * i : 2 * i + 2]
      record = int(train.index[ids[0], 0])
      assert train.index[ids[1], 0] == record and ids[0] != ids[1]
      np.testing.assert_array_equal(b["image"][i], train.example(int(ids[0]))["image"])
      for row, e in zip((2 * i, 2 * i + 1), ids):
        ex = train.example(int(e))
        np.testing.assert_array_equal(b["prompt"][row], ex["prompt"])
        np.testing.assert_array_equal(b["target_out"][row], ex["target_out"][: b["target_out"].shape[1]])
      mask = b["caption_mask"][i]
      assert set(np.unique(mask)) == {0.0, 0.5}
      words = [int(t) for t, m in zip(b["caption_out"][i], mask) if m > 0][:-1]  # drop EOS
      assert tok.decode(words) in train.records[record]["captions"]
      assert tok.decode([int(t) for t in b["caption_prompt"][i][: b["caption_prompt_len"][i]]]) == CAPTION_PROMPT
  assert_resumes_exactly(data, it, 2)


@pytest.mark.parametrize(
  "counts,settings,match",
  [
    (dict(vqa=2), {}, r"has \['caption'\] examples but config.data.examples_per_image counts only \['vqa'\]"),
    (dict(vqa=2, caption=1), dict(batch_size=13), r"config.batch_size=13 is not a multiple of the 3 examples per"),
    (dict(vqa=-1, caption=1), {}, r"config.data.examples_per_image.vqa=-1 must be an integer >= 0"),
    (dict(vqa=2, caption=1), dict(questions_per_image=2), r"set config.data.questions_per_image=1"),
  ],
)
def test_examples_per_image_errors_name_the_keys(tiny_config, counts, settings, match):
  tiny_config.batch_size = settings.pop("batch_size", 12)
  tiny_config.data.update(settings)
  tiny_config.data.examples_per_image.update(counts)
  with pytest.raises(ValueError, match=match):
    pipeline.Data(tiny_config).train_iterator()


def test_examples_per_image_leave_out_tasks_that_do_not_train(tiny_config):
  tiny_config.batch_size = 8
  tiny_config.data.examples_per_image.vqa = 2
  tiny_config.data.task_weights.caption = 0.0
  b = next(pipeline.Data(tiny_config).train_iterator())
  assert (b["task"] == TASK_VQA).all() and b["image"].shape[0] == 4
  assert not any(k.startswith("caption_") for k in b) and set(b) >= set(batches_lib.batch_keys(tiny_config))
  # ... and the split's tasks that a model kind does not train on (train_iterator's tasks).
  tiny_config.data.task_weights.caption = 1.0
  with pytest.raises(ValueError, match=r"has \['caption'\] examples"):
    pipeline.Data(tiny_config).train_iterator()
  b = next(pipeline.Data(tiny_config).train_iterator(tasks=("vqa",)))
  assert (b["task"] == TASK_VQA).all() and not any(k.startswith("caption_") for k in b)


def test_every_stream_a_batch_carries_is_decoded():
  """A stream is its keys: one under any name is decoded off the shared encoding, as the same rows
  given to the model on their own."""
  c = prefix_config()
  model = build_model(c.model, V)
  b = with_captions(grouped_batch(c))
  b = {k.replace("caption_", "detect_") if k.startswith("caption_") else k: v for k, v in b.items()}
  assert vlm.text_streams(b) == ("", "detect")
  params = nn.meta.unbox(model.init(jax.random.key(0), *(b[k][:1] for k in ARGS))["params"])
  logits = model.apply({"params": params}, b, method="stream_logits")
  assert set(logits) == {"", "detect"}
  ref = model.apply({"params": params}, b["image"], b["detect_prompt"], b["detect_prompt_len"], b["detect_in"])
  assert rel_err(logits["detect"], ref) < 1e-5


def test_manifest_images_missing_a_task_get_empty_rows(tmp_path):
  """examples_per_image on a manifest: an image without a question gets padding rows (valid False,
  mask 0) in the batch's own rows, one without a caption an empty caption, and the step trains."""
  from tests.test_data import _write_images, _write_manifest

  _write_images(tmp_path)
  lines = (
    [{"image": f"imgs/x{i}.png", "question": "how bright?", "answer": str(i), "split": "train"} for i in range(4)]
    + [{"image": f"imgs/x{i}.png", "caption": f"a grey square number {i}", "split": "train"} for i in (2, 3, 4, 5)]
    + [{"image": "imgs/rgb.png", "question": "what is it?", "answer": "noise", "split": "validation"}]
    + [{"image": "imgs/rgba.png", "question": "is it see-through?", "answer": "partly", "split": "test"}]
  )
  c = prefix_config()
  c.data.update(dict(manifest=str(_write_manifest(tmp_path, lines)), data_dir=str(tmp_path / "data"), image_size=32))
  c.batch_size = 12  # 4 images, each with 2 question rows and 1 caption row
  c.data.examples_per_image.update(dict(vqa=2, caption=1))
  data = pipeline.Data(c)
  train = data.split("train")
  setup = state_lib.make_setup(c, data.tokenizer.vocab_size, devices=jax.devices()[:1])
  state = state_lib.init_state(setup, jax.random.key(0))
  it, step, seen = data.train_iterator(), None, set()
  for _ in range(4):
    b = next(it)
    for i in range(4):
      questions = b["example_id"][2 * i : 2 * i + 2]
      brightness = int(b["image"][i].mean().round()) // 30  # images x0..x5 are flat grey 30 * i
      seen.add(brightness)
      if brightness >= 4:  # captions only: padding question rows
        assert (questions == -1).all() and not b["valid"][2 * i : 2 * i + 2].any()
        assert b["target_mask"][2 * i : 2 * i + 2].sum() == 0
      else:  # one question, cycled into both rows
        assert (questions == questions[0]).all() and b["valid"][2 * i : 2 * i + 2].all()
        assert train.records[int(train.index[questions[0], 0])]["answers"] == [str(brightness)]
      assert (b["caption_mask"][i].sum() > 0) == (brightness >= 2)
    step = step or step_lib.make_train_step(setup, b)
    with setup.context():
      state, m = step(state, {k: b[k] for k in batches_lib.batch_keys(c)})
    assert np.isfinite(float(m["loss"]))
  assert seen == set(range(6))  # every image of the train split trains


@pytest.mark.devices(8)  # on fewer devices it runs in a child pytest on 8 simulated ones (tests/multidevice.py)
def test_examples_per_image_step_on_8_devices_is_the_1_device_step():
  assert jax.device_count() == 8, jax.devices()
  c = prefix_config()
  c.batch_size = 24  # 8 images, each with 2 question rows and 1 caption row: one image per device
  c.data.examples_per_image.update(dict(vqa=2, caption=1))
  setup = state_lib.make_setup(c, V)
  b = with_captions(grouped_batch(c, images=8, per_image=2), images=8)
  b = {k: b[k] for k in batches_lib.batch_keys(c)}
  assert {k: v.shape[0] for k, v in b.items()} == {
    k: v.shape[0] for k, v in batches_lib.dummy_train_batch(c).items() if k in b
  }
  sh = setup.batch_sharding(b)
  assert all(sh[k].shard_shape(b[k].shape)[0] == 1 for k in ("image", "caption_in"))
  state = state_lib.init_state(setup, jax.random.key(0))
  params = jax.device_get(state.params)
  step = step_lib.make_train_step(setup, b)
  with setup.context():
    new, m = step(state, b)
  one = jax.devices()[0]
  model = setup.model
  grads, ref = step_lib.grads_and_metrics(model, jax.device_put(params, one), jax.device_put(b, one))
  np.testing.assert_allclose(float(m["loss"]), float(ref["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m["grad_norm"]), float(optax.global_norm(grads)), rtol=1e-4)
