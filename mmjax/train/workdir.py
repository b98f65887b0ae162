"""A run's workdir: its data and tokenizer (load_data), loading a trained one back (load), and the
evaluator of a run (make_evaluator: the one place that may load other runs for it)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import ml_collections

from mmjax import config_files
from mmjax.data import pipeline, prepare
from mmjax.evaluate.frechet import make_features_fn
from mmjax.train import batches as batches_lib, config as train_config, state as state_lib
from mmjax.train.checkpoint import Checkpointer

TOKENIZER_FILENAME = prepare.TOKENIZER_FILENAME  # the tokenizer a run keeps beside its checkpoints
PRETRAINED_TOKENIZER_DIR = "tokenizer"  # ... or, for config.data.tokenizer, the checkpoint's tokenizer files


def load_data(config, workdir: str):
  """Prepares the dataset and the tokenizer; a workdir's own tokenizer wins (resume / sample).
  Fails when the model reads media (config.model.audio / video) the dataset does not carry."""
  batches_lib.check_data_media(config, prepare.dataset_media(config))  # before building the dataset
  name = PRETRAINED_TOKENIZER_DIR if config.data.get("tokenizer") else TOKENIZER_FILENAME
  tok_path = os.path.join(workdir, name)
  data = pipeline.Data(config, tokenizer_path=tok_path if os.path.exists(tok_path) else None)
  if jax.process_index() == 0 and not os.path.exists(tok_path):
    os.makedirs(workdir, exist_ok=True)
    if config.data.get("tokenizer"):
      data.tokenizer.save(tok_path)
    else:
      shutil.copyfile(data.tokenizer.path, tok_path)
  return data


@dataclasses.dataclass
class Trained:
  config: ml_collections.ConfigDict
  data: object
  setup: state_lib.Setup
  params: object  # the EMA when the run keeps one (TrainState.model_params)
  step: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (keys added to mmjax since then take their defaults), locked."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no config.json: is it a mmjax training workdir?")
  with open(path) as f:
    config = train_config.upgrade(_tuples(json.load(f)))
  config.lock()
  return config


def _tuples(d):
  # JSON turns tuples into lists; ConfigDict keeps list vs tuple, so restore the config's tuples.
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


def load(workdir: str, overrides: dict | None = None) -> Trained:
  """Restores the newest checkpoint of `workdir` under the config it was trained with.

  `overrides` (dotted keys -> values) may change what does not touch parameters, e.g.
  {"mesh.data": 8, "model.attention_implementation": "xla"}.
  """
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  config_files.apply_overrides(config, overrides or {})
  data = load_data(config, workdir)
  setup = state_lib.make_setup(config, data.tokenizer.vocab_size)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, save_interval_steps=1)
  restored = ckpt.restore(setup.abstract_state, config)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no readable checkpoint.")
  step, state, _ = restored
  return Trained(config, data, setup, state.model_params, step)


def make_evaluator(setup, data):
  """setup.make_evaluator(data) with what only this floor can build from the config: the Frechet
  feature space of config.evaluate.frechet_features (mmjax.evaluate.frechet), which may be another
  run's workdir. What the trainer, experiments/evaluate.py and experiments/sample.py evaluate with."""
  spec = str(setup.config.evaluate.frechet_features)
  if not spec:
    return setup.make_evaluator(data)
  if setup.kind.evaluator != "t2i":
    raise ValueError(
      f"config.evaluate.frechet_features={spec!r} measures generated images, but config.model.kind="
      f"{setup.config.model.kind!r} generates none; set it to ''."
    )
  return setup.make_evaluator(data, features_fn=make_features_fn(spec, load))
