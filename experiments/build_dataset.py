r"""Builds the TFDS dataset (and its tokenizer) of a config's `data` block in one command.

  python experiments/build_dataset.py                                        # the main job's data
  python experiments/build_dataset.py --config.data.manifest=/path/manifest.jsonl \
      [--config.data.data_dir=/path/tfds] [--config.data.image_size=64] [--config.data.vocab_size=512]

Prints the dataset directory, the record count per split and the number of flattened
(question / caption) examples per split. Training builds the same dataset on first use; this
builds it ahead of time (e.g. once, before many runs share it).
"""

import os
import time

from absl import app, flags
from ml_collections import config_flags

from mmjax import cli
from mmjax.data import prepare, tfds_builders
from mmjax.data.examples import SPLITS

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
config_flags.DEFINE_config_file(
  "config", os.path.join(_CONFIGS, "default.py"), "Experiment config file.", lock_config=True
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  t0 = time.time()
  builder, tok = prepare.prepare(config)
  print(f"dataset: {builder.data_dir}")
  print(f"tokenizer: {prepare.tokenizer_path(builder)} (vocab_size={tok.vocab_size})")
  sizes = tfds_builders.split_sizes(builder)
  for split in SPLITS:
    if split not in sizes:  # a manifest whose records left this split empty
      print(f"  {split}: no records (not built)")
      continue
    n = sizes[split]
    examples = len(prepare.load_split(config, split, tok, builder)) if n else 0
    print(f"  {split}: {n} records, {examples} examples")
  print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  cli.run(main)
