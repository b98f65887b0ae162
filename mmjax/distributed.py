"""Multi-process start-up: `jax.distributed.initialize` from the environment.

Sources, first match wins:
  explicit   MMJAX_COORDINATOR_ADDRESS=host:port MMJAX_NUM_PROCESSES=N MMJAX_PROCESS_ID=i
  SLURM      srun sets SLURM_NTASKS > 1; JAX's SLURM cluster detection fills in the rest
  Cloud TPU  multi-host TPU VMs (TPU_WORKER_HOSTNAMES with several hosts); JAX detects the rest
Single-process runs (the default) do nothing.
"""

from __future__ import annotations

import os

import jax


def initialize_from_env() -> None:
  env = os.environ
  if env.get("MMJAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("MMJAX_NUM_PROCESSES", "MMJAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"MMJAX_COORDINATOR_ADDRESS is set but {missing} are not.")
    jax.distributed.initialize(
      coordinator_address=env["MMJAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["MMJAX_NUM_PROCESSES"]),
      process_id=int(env["MMJAX_PROCESS_ID"]),
    )
  elif int(env.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  elif len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    jax.distributed.initialize()
