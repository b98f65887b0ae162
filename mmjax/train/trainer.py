"""The training loop: sharded jit steps, periodic evaluation, checkpoints that resume by themselves.

  train_and_evaluate(config, workdir)

One loop for every model kind (config.model.kind: "vlm", or "contrastive" for CLIP / SigLIP): what
differs between them (init inputs, batch keys, loss, training tasks, evaluation) is asked of the
model's class (mmjax.models.kind).

A workdir holds everything a run needs to continue or be sampled from: checkpoints/ (train state,
input-pipeline position, config), tokenizer.model, config.json, metrics.jsonl, tensorboard/ and
samples/. Starting again on the same workdir resumes from the newest readable checkpoint.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import ml_collections
import tqdm

from mmjax.data import prepare
from mmjax.models import transfer
from mmjax.pretrained import compose
from mmjax.sample.report import write_report
from mmjax.train import batches as batches_lib, state as state_lib, step as step_lib, workdir as workdir_lib
from mmjax.train.checkpoint import Checkpointer
from mmjax.train.metrics_writer import MetricWriter
from mmjax.train.preemption import StopRequest


class NonFiniteLoss(FloatingPointError):
  pass


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the keys every experiment must have; errors name the flag to fix."""
  for key in ("total_steps", "batch_size", "eval_every", "checkpoint_every", "seed"):
    if key not in config:
      raise ValueError(f"config has no `{key}`: every experiment config must define it.")
  for key in ("total_steps", "batch_size", "checkpoint_every"):
    if int(config[key]) <= 0:
      raise ValueError(f"config.{key}={config[key]} must be a positive integer.")
  if int(config.eval_every) < 0:
    raise ValueError(f"config.eval_every={config.eval_every} must be >= 0 (0: evaluate only at the end).")
  for key in ("source", "manifest"):
    if key not in config.data:
      raise ValueError(
        f"config has no `data.{key}`: start config.data from mmjax.data.default_data_config() "
        "(data.source names the dataset; a non-empty data.manifest is the data)."
      )
  n = jax.process_count()
  if config.batch_size % n:
    raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {n} processes.")


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, progress: bool = True, batch_transform=None
) -> dict:
  """Trains (resuming from the workdir's newest checkpoint), evaluates and writes the sample report.

  batch_transform(step, batch) -> batch, when given, rewrites each host batch before it is sent to
  the devices (`step`: the step it trains, 1-based): on-host augmentation, or a test injecting a
  bad batch. Returns the final test metrics, or {"stopped_at": step} after a stop request.
  """
  validate_config(config)
  config = compose.configure(config)  # pretrained towers' architectures and tokenizer
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  data = workdir_lib.load_data(config, workdir)
  _check_eval_splits(config, data)
  setup = state_lib.make_setup(config, data.tokenizer.vocab_size)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, save_interval_steps=1)
  restored = ckpt.restore(setup.abstract_state, config)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  kind = setup.kind  # what differs between config.model.kind "vlm" and "contrastive"
  train_iter = data.train_iterator(jax.process_index(), jax.process_count(), tasks=kind.train_tasks)
  if restored is None:
    state = state_lib.init_state(setup, jax.random.key(config.seed))
    state = _init_from(state, setup, config)
    state = state.with_params(compose.load_into(state.params, config))
    start = 0
  else:
    start, state, data_state = restored
    train_iter.set_state(data_state)
    logging.info("resumed from step %d in %s", start, ckpt.directory)

  first = next(train_iter)
  step_fn = step_lib.make_train_step(setup, first, skip_nonfinite=config.skip_nonfinite)
  shardings = setup.batch_sharding(first)
  keys = batches_lib.batch_keys(config)
  writer = MetricWriter(workdir)
  evaluator = workdir_lib.make_evaluator(setup, data)
  stop = StopRequest()

  def put(batch, step):
    if batch_transform is not None:
      batch = batch_transform(step, batch)
    return {k: jax.make_array_from_process_local_data(shardings[k], batch[k]) for k in keys}

  def save(step, force=False):
    ckpt.save(step, state, data_state_before_next, config, force=force)

  def evaluate(split, step, max_examples):
    metrics, preds = evaluator(state.model_params, split, max_examples=max_examples, progress=progress)
    writer.write(step, metrics)
    return metrics, preds

  try:
    bar = tqdm.tqdm(
      total=config.total_steps,
      initial=start,
      desc="train",
      dynamic_ncols=True,
      disable=not progress or jax.process_index() != 0,
    )
    step = start
    pending = None  # metrics of the previous step: read one step late so dispatch runs ahead
    batch = first
    data_state_before_next = train_iter.get_state()
    t0, steps_since = time.time(), 0
    with setup.context():
      while step < config.total_steps:
        state, metrics = step_fn(state, put(batch, step + 1))
        step += 1
        data_state_before_next = train_iter.get_state()
        if step < config.total_steps:
          batch = next(train_iter)
        _check_finite(pending, step - 1, config)
        pending = (metrics, step)
        steps_since += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.total_steps:
          m = jax.device_get(metrics)
          rate = steps_since / max(time.time() - t0, 1e-9)
          t0, steps_since = time.time(), 0
          writer.write(
            step,
            {f"train/{k}": v for k, v in m.items() if k != "finite"}
            | {"train/steps_per_second": rate, "train/examples_per_second": rate * config.batch_size},
          )
          bar.set_postfix(loss=f"{float(m['loss']):.3f}", acc=f"{float(m[kind.progress_metric]):.3f}")
        stopping = stop.should_stop(step)
        if step % config.checkpoint_every == 0 or step == config.total_steps or stopping:
          _check_finite(pending, step, config)
          save(step, force=True)
        if stopping:
          bar.close()
          logging.warning("stopped at step %d on request; the checkpoint resumes it.", step)
          return {"stopped_at": step}
        if config.eval_every and step % config.eval_every == 0 and step != config.total_steps:
          evaluate("validation", step, config.eval_max_examples)
      bar.close()
      ckpt.wait()
      final, preds = evaluate("test", step, 0)  # the final test evaluation always sees the whole split
      if jax.process_index() == 0:
        write_report(os.path.join(workdir, "samples"), data, "test", preds, config.sample_examples)
  finally:
    # Also on a non-finite loss or any other error: in-flight asynchronous saves are of good
    # states, so let them finish and the workdir resumes from the newest one.
    ckpt.close()
    writer.close()
    stop.restore()
  return final


def _check_eval_splits(config, data) -> None:
  """Fails before training, not after it, when a split the run evaluates on is not in the dataset
  (a manifest without validation or test records; the error names the split and the manifest)."""
  prepare.check_split(data.builder, "test", "the final test evaluation")
  if 0 < config.eval_every < config.total_steps:
    prepare.check_split(
      data.builder,
      "validation",
      f"the evaluation every config.eval_every={config.eval_every} steps (set it to 0 to train without it)",
    )


def _init_from(state, setup, config):
  """config.model.init_from = {"image_encoder": WORKDIR}: copy those subtrees from other runs'
  newest parameters. Only on a fresh start: a resumed run already holds its own."""
  init_from = dict(config.model.init_from)
  if not init_from:
    return state
  params = transfer.init_from_workdirs(state.params, init_from, lambda wd: workdir_lib.load(wd).params)
  return state.with_params(jax.device_put(params, setup.state_sharding.params))


def _check_finite(pending, step, config):
  if pending is None or config.skip_nonfinite:
    return
  metrics, at = pending
  if not bool(metrics["finite"]):
    raise NonFiniteLoss(
      f"non-finite loss or gradients at step {at} (loss={float(metrics['loss'])}, "
      f"grad_norm={float(metrics['grad_norm'])}); no checkpoint was written after it. "
      "Lower optim.learning_rate, or set config.skip_nonfinite=True to skip such updates."
    )
