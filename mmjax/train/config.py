"""The base experiment config: every key the library reads, at its default, in one place.

Experiment configs (`experiments/configs/*.py`) start from `base_config()` and change values or
add their own blocks (a model kind's sizes, a project's data block); `mmjax.config_files.load`
then locks the result, so an override of a key that does not exist is an error instead of a new,
unread key. The library reads keys directly (`config.grad_accum_steps`), never with a fallback.

A run's saved `config.json` may come from an older mmjax that lacked some keys: `upgrade` puts it
over today's base, so the keys it lacks take their defaults (each default is the behaviour from
before the key existed).
"""

from __future__ import annotations

import ml_collections

from mmjax.data.config import default_data_config
from mmjax.models.kind import base_model_config


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 64  # global: examples (questions) per step over all devices and processes
  c.eval_every = 500  # validation every this many steps (0: only at the end)
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.log_every = 50
  c.eval_batch_size = 64
  c.eval_max_examples = 0  # periodic validation on the first N examples (0 = all); the final test uses all
  c.sample_examples = 8  # examples written to the sample report at the end
  c.skip_nonfinite = False  # True: skip updates whose loss/grads are NaN/Inf instead of stopping
  c.grad_accum_steps = 1  # microbatches per step (summed inside the jitted step with lax.scan)
  # > 0: the state also keeps an exponential moving average of the parameters (decay per step,
  # warmed up as min(decay, (1 + step) / (10 + step))), and evaluation, sampling and other runs'
  # init_from read it instead of the raw parameters. Generative image models need it most.
  c.ema_decay = 0.0
  c.data = default_data_config()
  c.model = base_model_config()
  c.optim = ml_collections.ConfigDict(
    dict(learning_rate=1e-3, warmup_steps=100, weight_decay=0.05, b1=0.9, b2=0.98, clip_norm=1.0, end_lr_fraction=0.02)
  )
  # Device mesh: the size of each axis within a slice / node (-1: the devices left), and across
  # slices / nodes over DCN (mmjax.sharding.make_mesh).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, sequence=1))
  c.dcn_mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, sequence=1))
  c.sharding = ml_collections.ConfigDict(dict(rules=()))  # overrides of mmjax.sharding's rules table
  # Evaluation options. frechet_features: the feature space of <split>/t2i_frechet for text-to-image
  # kinds (mmjax.evaluate.frechet): "" = none, a contrastive run's workdir (its image encoder, trained
  # on the same data), or "inception_v3:/path/weights.safetensors".
  c.evaluate = ml_collections.ConfigDict(dict(frechet_features=""))
  c.sampler = ml_collections.ConfigDict(
    dict(
      name="greedy",
      temperature=1.0,
      top_k=0,
      top_p=1.0,
      beam_size=1,
      max_new_tokens=0,  # 0 = data.max_target_len
      # Image generation (flow-matching kinds, mmjax.sample.flow): classifier-free guidance scale
      # (1 = the conditional sampler), ODE steps and solver ("euler" | "heun"). Text kinds ignore them.
      # Masked image-token models (MaskGIT, mmjax.sample.image_tokens.fill_codes) take `steps` as their
      # parallel steps and choice_temperature as the start of the noise on which codes are fixed first.
      # Causal image-token and pixel kinds keep the likeliest of `candidates` drawings of each caption
      # (mmjax.sample.rerank); token and pixel kinds guide only among the indices the conditional model
      # gives at least `plausibility` times its top probability (mmjax.sample.guidance; 0: all).
      guidance=3.0,
      steps=24,
      method="heun",
      choice_temperature=4.5,
      plausibility=0.0,
      candidates=1,
    )
  )
  return c


def upgrade(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (nested dicts, e.g. a workdir's config.json) over today's base config: keys the
  saved one lacks take their defaults; its own blocks (a kind's or a project's) are kept as saved."""
  config = base_config()
  _merge(config, saved)
  return config


def _merge(node: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
      _merge(node[key], value)
    else:
      # Saved values win, also over a default of another type (older configs stored e.g. a list).
      if key in node:
        del node[key]
      node[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
