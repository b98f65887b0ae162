r"""Text-to-image sampling throughput: images per second of a t2i config's sampler, unguided and guided.

  python experiments/benchmark_t2i.py --config=experiments/configs/t2i_flow.py --config.data.image_size=64 \
      --config.sampler.steps=32 --config.sampler.method=euler --batch=256         # the issue's GPU figure
  python experiments/benchmark_t2i.py --config=experiments/configs/t2i.py --batch=256
  python experiments/benchmark_train.py --config=experiments/configs/t2i_flow.py   # the train step's MFU

Parameters are the config's initial ones (throughput does not depend on what they learned) and the
prompts random caption tokens of the config's length. Each sampler is compiled once (mmjax.sample.
text_to_image.make_generate_fn, under the config's mesh), run once to warm up, then timed over
--repeats calls; both rows come from the same run, so their ratio is the cost of guidance here.
"""

import os
import time

from absl import flags
from ml_collections import config_flags

from mmjax import cli

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
config_flags.DEFINE_config_file("config", os.path.join(_CONFIGS, "t2i.py"), "A text-to-image experiment config.")
_BATCH = flags.DEFINE_integer("batch", 256, "Images per sampler call (rounded up to the mesh's batch shards).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per sampler, after one warm-up call.")
_VOCAB = flags.DEFINE_integer("vocab_size", 0, "Text vocabulary size (0 = config.data.vocab_size).")


def main(argv):
  del argv
  import jax
  import numpy as np

  from mmjax.sample import text_to_image as t2i_sample
  from mmjax.train import state as state_lib

  config = flags.FLAGS.config
  vocab = _VOCAB.value or int(config.data.vocab_size)
  setup = state_lib.make_setup(config, vocab)
  opts = t2i_sample.sampler_options(config)
  run = t2i_sample.make_generate_fn(setup, opts)
  params = state_lib.init_state(setup, jax.random.key(0)).params
  n = -(-_BATCH.value // run.multiple) * run.multiple
  rng = np.random.default_rng(0)
  length = int(config.data.max_target_len)
  tokens = rng.integers(4, vocab, (n, length)).astype(np.int32)
  lengths = rng.integers(1, length + 1, (n,)).astype(np.int32)
  s = int(config.data.image_size)
  print(f"devices: {len(jax.devices())} x {jax.devices()[0].device_kind}; mesh {dict(setup.mesh.shape)}")
  print(f"kind {config.model.kind}; sampler {opts}; batch {n}; images {s}x{s}")
  rates = {}
  for name, guidance in (("unguided", None), ("guided", float(opts["guidance"]))):
    run(params, tokens, lengths, jax.random.key(0), guidance)  # compile + warm up
    t = time.perf_counter()
    for i in range(_REPEATS.value):
      out = run(params, tokens, lengths, jax.random.key(i + 1), guidance)
    dt = (time.perf_counter() - t) / _REPEATS.value
    assert out.shape == (n, s, s, 3)
    rates[name] = n / dt
    print(f"{name}: {dt * 1e3:.1f} ms per call; {rates[name]:.1f} images/s")
  print(f"guided / unguided throughput: {rates['guided'] / rates['unguided']:.3f}")


if __name__ == "__main__":
  cli.run(main)
