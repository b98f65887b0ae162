r"""Train-step throughput and memory: step time, examples/s, tokens/s, MFU; memory per strategy.

  python experiments/benchmark_train.py --config=experiments/configs/tiny.py --steps=10 --peak_tflops=1
  python experiments/benchmark_train.py --config=experiments/configs/vlm_300m.py      # GPU / TPU
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/benchmark_train.py \
      --config=experiments/configs/tiny.py --strategies=data=8,fsdp=8,tensor=2:data=4,data=2:fsdp=2:tensor=2

Runs on synthetic batches (no dataset needed). Model FLOPs are the matrix products and
convolutions of the step's jaxpr (mmjax.train.flops), traced without rematerialisation and with
attention as plain XLA dots, forward + backward: recomputed activations are not model FLOPs, and a
fused kernel is counted as the products it replaces (attention logits in full, causal or not, as
PaLM's MFU counts them). MFU = model FLOPs/s / peak, the peak from --peak_tflops or a table of
known devices (bf16 dense). --strategies compiles the step for each mesh and prints the
per-device memory from compiled.memory_analysis().
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from mmjax import cli

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
config_flags.DEFINE_config_file("config", os.path.join(_CONFIGS, "default.py"), "Experiment config file.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "Vocabulary size (0 = config.data.vocab_size).")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device (0 = look up the device kind).")
_STRATEGIES = flags.DEFINE_string(
  "strategies",
  "",
  "Meshes to report memory for: comma-separated, axes joined by ':', e.g. 'data=8,fsdp=8,data=2:fsdp=2:tensor=2'.",
)

# bf16 dense peak TFLOP/s per device.
PEAK_TFLOPS = {
  "H100": 989.0,
  "H200": 989.0,
  "A100": 312.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
}


def peak_tflops(device) -> float | None:
  if _PEAK.value > 0:
    return _PEAK.value
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def _step(config, vocab):
  """(setup, batch, jitted train step, abstract sharded batch) for `config`."""
  import jax

  from mmjax.train import batches as batches_lib, state as state_lib, step as step_lib

  setup = state_lib.make_setup(config, vocab)
  batch = batches_lib.dummy_train_batch(config)
  step = step_lib.make_train_step(setup, batch)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(batch[k].shape, batch[k].dtype, sharding=s)
    for k, s in setup.batch_sharding(batch).items()
    if k in batches_lib.batch_keys(config)
  }
  return setup, batch, step, abstract_batch


def _setup(config, vocab, mesh=None):
  import ml_collections

  if mesh is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh = ml_collections.ConfigDict(dict(dict(data=1, fsdp=1, tensor=1, sequence=1), **mesh))
  setup, batch, step, abstract_batch = _step(config, vocab)
  with setup.context():
    compiled = step.lower(setup.abstract_state, abstract_batch).compile()
  return setup, batch, step, compiled


def _model_flops(config, vocab) -> float:
  """Matmul FLOPs of one global step as the model defines them: no remat, attention as XLA dots."""
  import ml_collections

  from mmjax.train import flops as flops_lib

  config = ml_collections.ConfigDict(config.to_dict())
  config.model.remat = "none"
  config.model.attention_implementation = "xla"
  setup, _, step, abstract_batch = _step(config, vocab)
  with setup.context():
    return float(flops_lib.matmul_flops(step, setup.abstract_state, abstract_batch))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def _memory(compiled) -> str:
  m = compiled.memory_analysis()
  if m is None:
    return "n/a"
  gib = lambda b: f"{b / 2**20:.1f} MiB"
  return (
    f"args {gib(m.argument_size_in_bytes)}, outputs {gib(m.output_size_in_bytes)}, "
    f"temps {gib(m.temp_size_in_bytes)}, generated code {gib(m.generated_code_size_in_bytes)}"
  )


def main(argv):
  del argv
  import jax
  import numpy as np

  from mmjax import distributed
  from mmjax.train import batches as batches_lib, state as state_lib

  distributed.initialize_from_env()
  config = flags.FLAGS.config
  vocab = _VOCAB.value or int(config.data.vocab_size)
  setup, batch, step, compiled = _setup(config, vocab)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(setup.abstract_state.params))
  hw_flops = _flops(compiled)  # per step, of the compiled SPMD program, i.e. per device
  flops = _model_flops(config, vocab) / len(jax.devices())
  state = state_lib.init_state(setup, jax.random.key(0))
  sh = setup.batch_sharding(batch)
  dev_batch = {k: jax.device_put(batch[k], sh[k]) for k in batches_lib.batch_keys(config)}
  with setup.context():
    for _ in range(2):
      state, m = step(state, dev_batch)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = step(state, dev_batch)
    jax.block_until_ready(m)
  dt = (time.perf_counter() - t) / _STEPS.value
  n_dev = len(jax.devices())
  tokens = config.batch_size * (config.data.max_target_len + config.data.max_prompt_len)
  print(f"devices: {n_dev} x {jax.devices()[0].device_kind}; mesh {dict(setup.mesh.shape)}")
  print(f"parameters: {n_params / 1e6:.2f}M")
  print(f"step time: {dt * 1e3:.2f} ms; examples/s: {config.batch_size / dt:.1f}; text tokens/s: {tokens / dt:.0f}")
  peak = peak_tflops(jax.devices()[0])
  if flops:
    achieved = flops / dt / 1e12
    mfu = f"{100 * achieved / peak:.2f}%" if peak else "n/a (pass --peak_tflops)"
    print(f"model FLOPs per step per device: {flops:.3e}; {achieved:.3f} TFLOP/s per device; MFU {mfu}")
  if hw_flops:
    print(
      f"XLA cost analysis of the compiled step, per device (for comparison; on GPU it misses "
      f"library and kernel calls): {hw_flops:.3e}"
    )
  print(f"memory per device: {_memory(compiled)}")
  for spec in filter(None, _STRATEGIES.value.split(",")):
    mesh = {k: int(v) for k, v in (a.split("=") for a in spec.split(":"))}
    try:
      _, _, _, c = _setup(config, vocab, mesh)
      print(f"strategy {mesh}: {_memory(c)}")
    except Exception as e:  # noqa: BLE001 - report and go on (e.g. a mesh that does not fit)
      print(f"strategy {mesh}: failed ({type(e).__name__}: {e})")


if __name__ == "__main__":
  cli.run(main)
