"""Subprocess entry point for tests/test_resume.py (and the 2-process test):

  python tests/train_entry.py WORKDIR DATA_DIR TOTAL_STEPS [STEP_SLEEP_S] [key=value ...]

Trains the tiny config with checkpoint_every=1 on WORKDIR. STEP_SLEEP_S > 0 slows each step down
(through the trainer's batch_transform) so a test can kill the run at a chosen step.
MMJAX_COORDINATOR_ADDRESS / MMJAX_NUM_PROCESSES / MMJAX_PROCESS_ID start a multi-process run.
Prints `stopped_at: N` when stopped by a signal, `done` otherwise.
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main(workdir, data_dir, total_steps, sleep=0.0, *overrides):
  import jax

  if os.environ.get("MMJAX_COORDINATOR_ADDRESS"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  from mmjax import config_files, distributed

  distributed.initialize_from_env()
  from mmjax.train import trainer

  c = config_files.load(os.path.join(ROOT, "experiments", "configs", "tiny.py"))
  c.data.data_dir = data_dir
  c.total_steps = int(total_steps)
  c.checkpoint_every = 1
  c.eval_every = 1000
  c.eval_max_examples = 8
  c.model.attention_implementation = "xla"
  for kv in overrides:
    k, v = kv.split("=", 1)
    config_files.apply_overrides(c, {k: type(eval("c." + k))(eval(v))})
  slow = (lambda step, batch: (time.sleep(float(sleep)), batch)[1]) if float(sleep) > 0 else None
  out = trainer.train_and_evaluate(c, workdir, progress=False, batch_transform=slow)
  print(f"stopped_at: {out['stopped_at']}" if "stopped_at" in out else "done", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
