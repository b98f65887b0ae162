"""Evaluation of a text-to-image model (config.model.kind "t2i_flow"): generate an image per caption and
let the dataset score it.

  evaluate = make_evaluator(setup, data)
  metrics, predictions = evaluate(params, "test", max_examples=0, progress=False)

Every captioning example of the split (its first `max_examples` when > 0) is one prompt: its caption.
Each prompt gets one image from the flow sampler at config.sampler.{steps, method}, twice from the
same starting noise: with classifier-free guidance at config.sampler.guidance, and without it (scale 1:
the conditional sampler, which is what guidance 1 computes, at half the cost). Rows go in full global
batches of config.eval_batch_size rounded up to the mesh's data x fsdp shards (padding rows dropped).
The noise of a batch is drawn from config.seed and the batch's index, so an evaluation is repeatable.

Metrics: the dataset's image_scorer (mmjax.data.source) over (prompt, image) pairs, each named
"<split>/<metric>" for the guided images and "<split>/<metric>_noguidance" for the unguided ones.
A dataset without a scorer reports no metrics (one logged note): images alone have no ground truth
here, and a distribution distance (Frechet distance) is not implemented.

Predictions (for the sample report): one per prompt, in split order, with the per-image scores as
its `prediction` text and the generated images under "image" / "image_noguidance" (uint8 [H, W, 3]);
the report itself still shows the dataset's image of the caption (the reference).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import sharding
from mmjax.evaluate.contrastive import caption_text
from mmjax.sample import flow
from mmjax.sample.embed import caption_batches

NO_GUIDANCE = "_noguidance"


def generate(
  model,
  params,
  tokens,
  lengths,
  rng,
  *,
  image_size: int,
  steps: int,
  method: str = "heun",
  guidance: float | None = None,
  channels: int = 3,
) -> jax.Array:
  """uint8 images [B, image_size, image_size, channels] of a TextToImageFlow `model` for caption tokens
  [B, L] (no BOS / EOS) with `lengths` [B].

  guidance None: the conditional sampler (B rows per velocity evaluation). A number: classifier-free
  guidance on the doubled batch [conditional; null condition] (scale 1 gives the conditional sampler's
  images up to float rounding, at twice the cost). A deterministic function of rng (the starting
  noise). steps, method and guidance are static under jit."""
  from mmjax.models.text_to_image import to_pixels

  text = model.apply({"params": params}, tokens, lengths, method="encode_text")
  shape = (tokens.shape[0], image_size, image_size, channels)

  def vel(x, t, txt, ln):
    return model.apply({"params": params}, x, t, txt, ln, method="velocity")

  if guidance is None:
    v = lambda x, t: vel(x, t, text, lengths)
  else:
    text2, len2 = jnp.concatenate([text, text]), jnp.concatenate([lengths, jnp.zeros_like(lengths)])
    v = lambda x2, t2: vel(x2, t2, text2, len2)
  return to_pixels(flow.sample(v, rng, shape, steps=steps, method=method, guidance_scale=guidance))


def sampler_options(config) -> dict:
  """steps, method and guidance of config.sampler, checked (errors name the key)."""
  s = config.sampler
  steps, method, guidance = int(s.steps), str(s.method), float(s.guidance)
  if steps < 1:
    raise ValueError(f"config.sampler.steps={steps} must be >= 1.")
  if method not in flow.METHODS:
    raise ValueError(f"config.sampler.method={method!r}: use one of {flow.METHODS}.")
  return dict(steps=steps, method=method, guidance=guidance)


def make_generate_fn(setup, image_size: int, steps: int, method: str):
  """run(params, tokens, lengths, rng, guidance) -> numpy uint8 images of all processes' rows, jit-
  compiled under the training mesh (batch on data x fsdp, params as in training), one compilation
  per guidance value (None: the conditional sampler). Every process passes its share of a global
  batch whose size is a multiple of `run.multiple`."""
  model = setup.model
  image_s, mat_s, vec_s = (sharding.batch_sharding(setup.mesh, r) for r in (4, 2, 1))
  replicated = NamedSharding(setup.mesh, P())
  compiled = {}

  def fn(guidance):
    if guidance not in compiled:
      compiled[guidance] = jax.jit(
        lambda p, tok, ln, rng: generate(
          model, p, tok, ln, rng, image_size=image_size, steps=steps, method=method, guidance=guidance
        ),
        in_shardings=(setup.state_sharding.params, mat_s, vec_s, replicated),
        out_shardings=image_s,
      )
    return compiled[guidance]

  def run(params, tokens, lengths, rng, guidance=None):
    put = lambda x, s: jax.make_array_from_process_local_data(s, np.asarray(x))
    with setup.context():
      out = fn(guidance)(params, put(tokens, mat_s), put(lengths, vec_s), jax.device_put(rng, replicated))
    if jax.process_count() == 1:
      return np.asarray(out)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))

  run.multiple = setup.mesh.shape["data"] * setup.mesh.shape["fsdp"]
  return run


def generate_split(data, split, generate_fn, params, batch_size, seed, guidance, max_examples=0, progress=False):
  """(ids [M] captioning example ids, prompts [M], guided images [M, S, S, 3], unguided images) of
  `split` in split order (module docstring)."""
  sd = data.split(split)
  ids, batches = caption_batches(data, split, batch_size, generate_fn.multiple, "text-to-image", max_examples, progress)
  guided, plain = [], []
  for i, batch in enumerate(batches):
    tokens, lengths = batch["tokens"], batch["lengths"]
    # One key per global batch, shared by both samplers: the two images of a prompt start from the
    # same noise, so their scores differ by guidance alone.
    rng = jax.random.fold_in(jax.random.key(seed), i)
    guided.append(generate_fn(params, tokens, lengths, rng, guidance))
    plain.append(generate_fn(params, tokens, lengths, rng, None))
  prompts = [caption_text(sd, int(i)) for i in ids]
  return ids, prompts, np.concatenate(guided)[: len(ids)], np.concatenate(plain)[: len(ids)]


_skip_noted = set()


def _score_text(scores: dict) -> str:
  return ", ".join(f"{k}={v:.2f}" for k, v in sorted(scores.items())) or "(not scored)"


def evaluate_split(data, split, generate_fn, params, config, max_examples=0, progress=False):
  """(metrics, predictions) of the module doc for `split`."""
  opts = sampler_options(config)
  # Guidance 1 is the conditional sampler exactly (flow_matching.guided); skip the doubled batch.
  guidance = None if opts["guidance"] == 1.0 else opts["guidance"]
  ids, prompts, guided, plain = generate_split(
    data, split, generate_fn, params, config.eval_batch_size, int(config.seed), guidance, max_examples, progress
  )
  scorer = data.source.image_scorer
  cfg = data.builder.builder_config
  metrics = {}
  if scorer is None:
    if data.builder.name not in _skip_noted:
      _skip_noted.add(data.builder.name)
      logging.warning("%s defines no image_scorer: text-to-image metrics are skipped.", data.builder.name)
  else:
    for suffix, images in (("", guided), (NO_GUIDANCE, plain)):
      metrics |= {f"{split}/{k}{suffix}": float(v) for k, v in scorer(cfg, prompts, images).items()}
  predictions = []
  for i, example_id in enumerate(ids):
    if scorer is None:
      text = "(not scored)"
    else:
      text = (
        f"guided: {_score_text(scorer(cfg, [prompts[i]], guided[i : i + 1]))}; "
        f"unguided: {_score_text(scorer(cfg, [prompts[i]], plain[i : i + 1]))}"
      )
    predictions.append(
      dict(
        example_id=int(example_id),
        task="caption",
        qtype="t2i",
        prompt=prompts[i],
        prediction=text,
        references=data.references(split, int(example_id)),
        image=guided[i],
        image_noguidance=plain[i],
      )
    )
  return metrics, predictions


def make_evaluator(setup, data):
  """evaluate(params, split, max_examples=0, progress=False) -> (metrics, predictions) of the module doc."""
  config = setup.config
  opts = sampler_options(config)
  generate_fn = make_generate_fn(setup, int(config.data.image_size), opts["steps"], opts["method"])

  def evaluate(params, split: str, max_examples: int = 0, progress: bool = False):
    return evaluate_split(data, split, generate_fn, params, config, max_examples, progress)

  return evaluate
