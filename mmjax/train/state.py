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

from mmjax import sharding
from mmjax.data.config import CAPTION_FIELDS, captions_with_questions, max_audio_samples, questions_per_image
from mmjax.models import build_model, model_kind as model_kind_name, transfer
from mmjax.models import contrastive, vlm
from mmjax.train.optim import make_optimizer

# The keys every model's train step reads; batch_keys(config) adds the media its encoders read.
BATCH_KEYS = ("image", "prompt", "prompt_len", "target_in", "target_out", "target_mask")

# What to set so the dataset carries a modality's batch keys (for the errors of check_data_media).
_MEDIA_DATA_KEYS = {
    "audio": "--config.data.spoken_questions=True (spoken questions) or --config.data.object_sounds=True "
             "(object sounds; manifests: \"audio\" files)",
    "video": "--config.data.video_frames=N (N > 0 frames per clip; manifests: \"video\" entries)",
}


def batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch keys the train step reads (the model kind's; for a VLM BATCH_KEYS plus the media
  keys of its encoders)."""
  return model_kind(config).batch_keys(config)


def _vlm_batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  captions = CAPTION_KEYS if captions_with_questions(config) else ()
  return BATCH_KEYS + vlm.media_input_keys(config.model) + captions


def check_data_media(config: ml_collections.ConfigDict, data_media) -> None:
  """Fails at start when the model reads a medium the dataset does not carry (`data_media`:
  pipeline.Data.media), or reads audio at another sample rate than the data's."""
  for m in vlm.media_modalities(config.model):
    if m not in data_media:
      raise ValueError(f"config.model.{m} turns on the {m} encoder, but the dataset has no {m}: set "
                       f"{_MEDIA_DATA_KEYS[m]}, or remove config.model.{m}.")
  if "audio" in vlm.media_modalities(config.model):
    from mmjax.encoders import AudioEncoder
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
  def kind(self) -> "ModelKind":
    return model_kind(self.config)


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
  kind = model_kind(config)
  kind.check(config)
  model = build_model(config.model, vocab_size)
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
    args, kwargs = kind.init_inputs(config, batch)
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


def loss_sums(model, params, batch):
  """Unnormalised sums over the batch: (sum of weighted xent, (that sum, correct tokens, weight)).

  Sums (not means) so microbatches add up exactly to the full batch (gradient accumulation). A
  batch with CAPTION_KEYS adds its caption tokens (weighted by caption_mask) to the same sums.
  """
  if "caption_in" in batch:
    logits, caption_logits = model.apply(
        {"params": params}, batch["image"], batch["prompt"], batch["prompt_len"], batch["target_in"],
        *(batch[k] for k in ("caption_prompt", "caption_prompt_len", "caption_in")), method="with_captions")
    parts = [(logits, batch["target_out"], batch["target_mask"]),
             (caption_logits, batch["caption_out"], batch["caption_mask"])]
  else:
    logits = model.apply({"params": params}, batch["image"], batch["prompt"], batch["prompt_len"],
                         batch["target_in"], **vlm.media_inputs(model.config, batch))
    parts = [(logits, batch["target_out"], batch["target_mask"])]
  xent_sum = correct = n = 0.0
  for logits, labels, weights in parts:
    xent_sum += (optax.softmax_cross_entropy_with_integer_labels(logits, labels) * weights).sum()
    correct += ((logits.argmax(-1) == labels) * weights).sum()
    n += weights.sum()
  return xent_sum, (xent_sum, correct, n)


def loss_fn(model, params, batch):
  xent_sum, (_, correct, n) = loss_sums(model, params, batch)
  denom = jnp.maximum(n, 1.0)
  loss = xent_sum / denom
  return loss, {"loss": loss, "token_accuracy": correct / denom}


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
  """Gradient of the token-mean loss over the whole batch, summed over `grad_accum_steps`
  microbatches inside one lax.scan (activation memory of one microbatch)."""
  grad_fn = jax.grad(lambda p, b: loss_sums(model, p, b), has_aux=True)
  if grad_accum_steps <= 1:
    grads, (xent_sum, correct, n) = grad_fn(params, batch)
  else:
    micro = _microbatches(batch, grad_accum_steps)

    def body(carry, mb):
      mb = {k: sharding.constrain(v, ("act_batch",) + (None,) * (v.ndim - 1)) for k, v in mb.items()}
      g, sums = grad_fn(params, mb)
      acc_g, acc_s = carry
      return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, sums)), None

    zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()), jnp.zeros(()), jnp.zeros(())))
    (grads, (xent_sum, correct, n)), _ = jax.lax.scan(body, zeros, micro)
  denom = jnp.maximum(n, 1.0)
  grads = jax.tree.map(lambda g: g / denom, grads)
  loss = xent_sum / denom
  return grads, {"loss": loss, "token_accuracy": correct / denom}


def make_train_step(setup: Setup, batch_example: dict, skip_nonfinite: bool = False,
                    grad_accum_steps: int | None = None):
  """jit-compiled step with explicit in/out shardings; the state is donated (updated in place).

  grad_accum_steps (default: config.grad_accum_steps or 1) splits the batch into that many
  microbatches whose gradients are summed before the single optimizer update.
  """
  model, tx = setup.model, setup.tx
  accum = int(grad_accum_steps or setup.config.get("grad_accum_steps", 1) or 1)

  def step(state: TrainState, batch):
    grads, metrics = setup.kind.grads_and_metrics(model, state.params, batch, accum)
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


def contrastive_grads_and_metrics(model, params, batch, grad_accum_steps: int = 1):
  """Gradient of the CLIP / SigLIP loss over the whole global batch of (image, caption) pairs (every
  other caption of the batch is a negative), plus in-batch top-1 retrieval accuracies and the
  learned temperature. No microbatching: the loss couples every pair of the batch (see
  _check_contrastive)."""
  if grad_accum_steps > 1:
    raise ValueError(_CONTRASTIVE_ACCUM)
  loss_kind = model.config.get("loss", "clip")

  def loss_fn(p):
    img, txt, scale, bias = model.apply({"params": p}, batch["image"],
                                        *contrastive.caption_tokens(batch["target_out"], batch["target_mask"]))
    loss = contrastive.contrastive_loss(img, txt, scale, bias, loss_kind)
    logits = contrastive.pairwise_logits(img, txt, scale, bias)
    target = jnp.arange(logits.shape[0])
    metrics = {"loss": loss, "batch_i2t_accuracy": (logits.argmax(1) == target).mean(),
               "batch_t2i_accuracy": (logits.argmax(0) == target).mean(), "temperature": jnp.exp(scale)}
    if bias is not None:
      metrics["logit_bias"] = bias
    return loss, metrics

  grads, metrics = jax.grad(loss_fn, has_aux=True)(params)
  return grads, metrics


_CONTRASTIVE_ACCUM = ("config.model.kind='contrastive' trains on the whole global batch at once: the CLIP / SigLIP "
                      "loss couples every pair of it, so microbatches (grad accumulation) would change the objective "
                      "(fewer negatives); set --config.grad_accum_steps=1 and a --config.batch_size that fits.")


def _check_contrastive(config: ml_collections.ConfigDict) -> None:
  """Start-up errors of a contrastive config, naming the keys to change."""
  if int(config.get("grad_accum_steps", 1) or 1) > 1:
    raise ValueError(_CONTRASTIVE_ACCUM)
  if not config.data.get("captions", True):
    raise ValueError("config.model.kind='contrastive' trains on (image, caption) pairs, but "
                     "config.data.captions=False: set --config.data.captions=True.")
  text_len, caption_len = int(config.model.text.max_len), int(config.data.max_target_len)
  if text_len < caption_len:
    raise ValueError(f"config.model.text.max_len={text_len} < config.data.max_target_len={caption_len}: the "
                     "contrastive text tower reads whole captions (up to max_target_len - 1 tokens); set "
                     "--config.model.text.max_len to at least max_target_len.")
  extra = vlm.media_modalities(config.model)
  if extra:
    raise ValueError(f"config.model.kind='contrastive' has an image and a text tower only; remove "
                     f"config.model.{extra[0]}.")


def _vlm_evaluator(setup: Setup, data):
  from mmjax.evaluate import evaluator  # imported when used: it pulls in generation
  return evaluator.make_evaluator(setup, data)


def _contrastive_evaluator(setup: Setup, data):
  from mmjax.evaluate import contrastive as contrastive_eval  # imported when used: it pulls in the data pipeline
  return contrastive_eval.make_evaluator(setup, data)


@dataclasses.dataclass(frozen=True)
class ModelKind:
  """What the one trainer does differently per config.model.kind (KINDS); everything else (mesh,
  optimizer, checkpoints, the loop) is shared.

  init_inputs(config, batch) -> (args, kwargs) of model.init from a dummy_batch.
  batch_keys(config) -> the batch keys the train step reads.
  grads_and_metrics(model, params, batch, grad_accum_steps) -> (grads, metrics with "loss").
  make_evaluator(setup, data) -> evaluate(params, split, max_examples=0, progress=False)
      -> (metrics named "<split>/<metric>", predictions for sample.report.write_report).
  train_tasks: the pipeline TASK_NAMES trained on (None: all of the dataset's).
  progress_metric: the train metric shown next to the loss on the progress bar.
  check(config): start-up errors of configs this kind cannot train.
  """
  name: str
  init_inputs: Callable
  batch_keys: Callable
  grads_and_metrics: Callable
  make_evaluator: Callable
  train_tasks: tuple[str, ...] | None = None
  progress_metric: str = "token_accuracy"
  check: Callable = lambda config: None


KINDS = {
    # Vision-language model: teacher-forced next-token loss on every task; evaluated by generation
    # (VQA accuracy, CIDEr, matching accuracy).
    "vlm": ModelKind(
        name="vlm",
        init_inputs=lambda config, b: ((b["image"], b["prompt"], b["prompt_len"], b["target_in"]),
                                       vlm.media_inputs(config.model, b)),
        batch_keys=_vlm_batch_keys, grads_and_metrics=grads_and_metrics, make_evaluator=_vlm_evaluator),
    # CLIP / SigLIP: (image, caption) pairs of the captioning examples, the caption's tokens as the
    # text; evaluated by retrieval recall@k and zero-shot shape classification.
    "contrastive": ModelKind(
        name="contrastive",
        init_inputs=lambda config, b: ((b["image"], *contrastive.caption_tokens(b["target_out"], b["target_mask"])), {}),
        batch_keys=lambda config: ("image", "target_out", "target_mask"),
        grads_and_metrics=contrastive_grads_and_metrics, make_evaluator=_contrastive_evaluator,
        train_tasks=("caption",), progress_metric="batch_i2t_accuracy", check=_check_contrastive),
}


def model_kind(config: ml_collections.ConfigDict) -> ModelKind:
  """The ModelKind of config.model.kind ("vlm" when absent)."""
  return KINDS[model_kind_name(config.model)]
