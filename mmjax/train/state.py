"""Train state, its logical-axis shardings, and the jit-compiled train step."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax import registry, sharding
from mmjax.data.config import CAPTION_FIELDS, captions_with_questions, max_audio_samples, questions_per_image
from mmjax.encoders import AudioEncoder
from mmjax.models import model_class, transfer, vlm
from mmjax.train.optim import make_optimizer

# What to set so the dataset carries a modality's batch keys (for the errors of check_data_media).
_MEDIA_DATA_KEYS = {
    "audio": "config.data.spoken_questions=True (spoken questions), or give the records their own sound "
             "(manifests: \"audio\" files; a procedural dataset: its own sound option)",
    "video": "config.data.video_frames=N (N > 0 frames per clip; manifests: \"video\" entries)",
}


def batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch keys the train step reads: the model kind's, plus the captions that ride along with
  the questions (data.captions_with_questions)."""
  captions = CAPTION_KEYS if captions_with_questions(config) else ()
  return model_class(config.model).batch_keys(config.model) + captions


def check_data_media(config: ml_collections.ConfigDict, data_media) -> None:
  """Fails at start when the model reads a medium the dataset does not carry (`data_media`:
  pipeline.Data.media), or reads audio at another sample rate than the data's."""
  for m in vlm.media_modalities(config.model):
    if m not in data_media:
      raise ValueError(f"config.model.{m} turns on the {m} encoder, but the dataset has no {m}: set "
                       f"{_MEDIA_DATA_KEYS[m]}, or remove config.model.{m}.")
  if "audio" in vlm.media_modalities(config.model):
    model_rate = int(config.model.audio.get("sample_rate", AudioEncoder.sample_rate))
    data_rate = int(config.data.get("audio_sample_rate", 16000))
    if model_rate != data_rate:
      raise ValueError(f"config.model.audio.sample_rate={model_rate} but config.data.audio_sample_rate={data_rate}: "
                       "the audio encoder's mel filters assume its own rate; set them equal.")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass
class Setup:
  """Everything built from a config once: model, mesh, rules, optimizer, state shardings."""
  config: ml_collections.ConfigDict
  model: nn.Module
  mesh: Mesh
  rules: tuple
  tx: optax.GradientTransformation
  state_sharding: Any
  abstract_state: Any
  init_fn: Callable  # rng -> TrainState with logically boxed parameters (see init_state)

  def batch_sharding(self, batch) -> dict:
    return {k: sharding.batch_sharding(self.mesh, np.ndim(v)) for k, v in batch.items()}

  def context(self):
    """Mesh + logical rules: needed while tracing anything that constrains activations."""
    return _mesh_and_rules(self.mesh, self.rules)

  @property
  def kind(self) -> type:
    """The model's class, with the model-kind hooks (mmjax.models.kind)."""
    return type(self.model)

  def make_evaluator(self, data):
    """The evaluation of this model kind: evaluate(params, split, max_examples=0, progress=False)
    -> (metrics named "<split>/<metric>", predictions for sample.report.write_report)."""
    return registry.get("evaluators", self.kind.evaluator, "the model kind's evaluator")(self, data)


@contextlib.contextmanager
def _mesh_and_rules(mesh, rules):
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def dummy_batch(config: ml_collections.ConfigDict, batch_size: int) -> dict:
  """A batch of the shapes the pipeline makes for `config` (with the media the model reads)."""
  s = config.data.image_size
  batch = {
      "image": np.zeros((batch_size, s, s, 3), np.uint8),
      "prompt": np.ones((batch_size, config.data.max_prompt_len), np.int32),
      "prompt_len": np.full((batch_size,), config.data.max_prompt_len, np.int32),
      "target_in": np.ones((batch_size, config.data.max_target_len), np.int32),
      "target_out": np.ones((batch_size, config.data.max_target_len), np.int32),
      "target_mask": np.ones((batch_size, config.data.max_target_len), np.float32),
  }
  media = vlm.media_modalities(config.model)
  if "audio" in media:
    n = max_audio_samples(config.data)
    batch |= {"audio": np.zeros((batch_size, n), np.int16), "audio_len": np.full((batch_size,), n, np.int32)}
  if "video" in media:
    t = int(config.data.get("video_frames", 0))
    if t <= 0:
      raise ValueError(f"config.model.video turns on the video encoder, but config.data.video_frames={t}: set "
                       f"{_MEDIA_DATA_KEYS['video']}.")
    batch |= {"video": np.zeros((batch_size, t, s, s, 3), np.uint8), "video_len": np.full((batch_size,), t, np.int32)}
  return batch


def dummy_train_batch(config: ml_collections.ConfigDict) -> dict:
  """A global train batch of the shapes the pipeline makes for `config`: batch_size rows, with
  data.questions_per_image G > 1 batch_size / G images, and with data.captions_with_questions
  their captions (CAPTION_KEYS)."""
  batch = dummy_batch(config, config.batch_size)
  images = config.batch_size // questions_per_image(config)
  batch["image"] = batch["image"][:images]
  if captions_with_questions(config):
    batch |= {key: batch[field][:images] for key, field in CAPTION_FIELDS.items()}
  return batch


def make_setup(config: ml_collections.ConfigDict, vocab_size: int, devices=None) -> Setup:
  kind = model_class(config.model)
  kind.check_config(config)
  if int(config.get("grad_accum_steps", 1) or 1) > 1 and not kind.accumulates_gradients:
    raise ValueError(f"config.model.kind={config.model.get('kind', 'vlm')!r} trains on the whole global batch at "
                     "once: its loss couples the examples of the batch, so microbatches (grad accumulation) would "
                     "change the objective; set --config.grad_accum_steps=1 and a --config.batch_size that fits.")
  model = kind(config.model, vocab_size)
  mesh = sharding.make_mesh(dict(config.mesh), dict(config.get("dcn_mesh", {}) or {}), devices=devices)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.batch_size % shards:
    raise ValueError(f"--config.batch_size={config.batch_size} is not divisible by the {shards} batch shards of the "
                     f"mesh {dict(mesh.shape)} (data x fsdp); change --config.batch_size or --config.mesh.")
  images = config.batch_size // questions_per_image(config)
  if images % shards:
    raise ValueError(f"--config.batch_size={config.batch_size} with --config.data.questions_per_image="
                     f"{config.data.questions_per_image} gives VQA batches of {images} images, not divisible by the "
                     f"{shards} batch shards of the mesh {dict(mesh.shape)}; change one of them or --config.mesh.")
  rules = sharding.rules_from_config(config.sharding.rules)
  tx = make_optimizer(config.optim, config.total_steps)
  # Frozen subtrees get zero updates and no optimizer state (config.model.freeze).
  tx = transfer.freeze(tx, tuple(config.model.get("freeze", ()) or ()))
  batch = dummy_batch(config, 1)

  def init(rng):
    args, kwargs = kind.init_inputs(config.model, batch)
    variables = model.init(rng, *args, **kwargs)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  with _mesh_and_rules(mesh, rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
  logical = nn.get_partition_spec(boxed)
  state_sharding = nn.logical_to_mesh_sharding(logical, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.meta.unbox(boxed), state_sharding)
  return Setup(config, model, mesh, rules, tx, state_sharding, abstract, init)


def init_state(setup: Setup, rng) -> TrainState:
  with setup.context():
    return jax.jit(lambda r: nn.meta.unbox(setup.init_fn(r)), out_shardings=setup.state_sharding)(rng)


# Batch keys of the images' captions that ride along with their questions (data.captions_with_questions).
CAPTION_KEYS = tuple(CAPTION_FIELDS)


def _microbatches(batch, k: int):
  """[B, ...] -> [k, B/k, ...] with microbatch j = rows j, j+k, j+2k, ...: every device keeps its
  share of every microbatch (rows stay on the device that holds them), so no data moves.

  With G prompts per image (the image batch B/G, data.questions_per_image) the rows are split by
  image: microbatch j holds images j, j+k, ... and the G prompts of each."""
  n_images = batch["image"].shape[0]

  def split(x):
    group = x.shape[0] // n_images
    if n_images % k:
      raise ValueError(f"grad_accum_steps={k} does not divide the batch of {n_images} images.")
    x = x.reshape(n_images // k, k, group, *x.shape[1:])
    return jnp.swapaxes(x, 0, 1).reshape(k, n_images // k * group, *x.shape[3:])
  return jax.tree.map(split, batch)


def grads_and_metrics(model, params, batch, grad_accum_steps: int = 1):
  """Gradient of the model's loss over the whole batch (its kind's loss_sums: the objective summed
  over the batch, divided by the summed weight), summed over `grad_accum_steps` microbatches inside
  one lax.scan (activation memory of one microbatch). Returns (grads, metrics): "loss" and every
  other sum of loss_sums divided by the weight."""
  def sums_fn(p, b):
    objective, sums = model.apply({"params": p}, b, method="loss_sums")
    return objective, dict(sums, loss=objective)

  grad_fn = jax.grad(sums_fn, has_aux=True)
  if grad_accum_steps <= 1:
    grads, sums = grad_fn(params, batch)
  else:
    micro = _microbatches(batch, grad_accum_steps)
    _, sums_shape = jax.eval_shape(sums_fn, params, jax.tree.map(lambda x: x[0], micro))

    def body(carry, mb):
      mb = {k: sharding.constrain(v, ("act_batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
      g, s = grad_fn(params, mb)
      acc_g, acc_s = carry
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, s)), None

    zeros = (jax.tree.map(jnp.zeros_like, params),
             jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), sums_shape))
    (grads, sums), _ = jax.lax.scan(body, zeros, micro)
  # Token-mean (VLM) semantics: an all-padding batch has weight 0 and must not divide by it.
  denom = jnp.maximum(sums["weight"], 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  return grads, {k: v / denom for k, v in sums.items() if k != "weight"}


def make_train_step(setup: Setup, batch_example: dict, skip_nonfinite: bool = False,
                    grad_accum_steps: int | None = None):
  """jit-compiled step with explicit in/out shardings; the state is donated (updated in place).

  grad_accum_steps (default: config.grad_accum_steps or 1) splits the batch into that many
  microbatches whose gradients are summed before the single optimizer update.
  """
  model, tx = setup.model, setup.tx
  accum = int(grad_accum_steps or setup.config.get("grad_accum_steps", 1) or 1)

  def step(state: TrainState, batch):
    grads, metrics = grads_and_metrics(model, state.params, batch, accum)
    loss = metrics["loss"]
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      # Keep the old parameters and optimizer state: a bad batch must not poison the run.
      params = jax.tree.map(lambda new, old: jnp.where(finite, new, old), params, state.params)
      opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, state.opt_state)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_sharding = {k: setup.batch_sharding(batch_example)[k] for k in batch_keys(setup.config)}
  replicated = NamedSharding(setup.mesh, P())
  return jax.jit(step, in_shardings=(setup.state_sharding, batch_sharding),
                 out_shardings=(setup.state_sharding, replicated), donate_argnums=(0,))
