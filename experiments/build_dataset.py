r"""Builds an mmjax TFDS dataset (and its tokenizer) in one command.

  python experiments/build_dataset.py --manifest=/path/manifest.jsonl --data_dir=/path/tfds \
      [--image_size=64] [--vocab_size=512]

Without --manifest it builds the procedural shapes dataset (--train_scenes, --validation_scenes,
--test_scenes, --shapes). Prints the dataset directory, the record count per split and the number
of flattened (question/caption) examples per split.
"""
import time

from absl import app
from absl import flags

from mmjax import cli
from mmjax.data import default_data_config
from mmjax.data import pipeline
from mmjax.data import tfds_builders

_MANIFEST = flags.DEFINE_string("manifest", "", "JSONL manifest; empty builds shapes.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: $MMJAX_DATA_DIR or "
                                "~/.cache/mmjax/tensorflow_datasets).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Square image size.")
_SEED = flags.DEFINE_integer("seed", 0, "Shapes scene seed / manifest split seed.")
_VOCAB = flags.DEFINE_integer("vocab_size", 512, "Tokenizer vocabulary size (max).")
_TRAIN = flags.DEFINE_integer("train_scenes", 12000, "Shapes: train scenes.")
_VAL = flags.DEFINE_integer("validation_scenes", 500, "Shapes: validation scenes.")
_TEST = flags.DEFINE_integer("test_scenes", 1000, "Shapes: test scenes.")
_SHAPES = flags.DEFINE_integer("shapes", 3, "Shapes: number of shape kinds (2 or 3).")


def main(argv):
  del argv
  data = default_data_config()
  data.manifest = _MANIFEST.value
  if _DATA_DIR.value:
    data.data_dir = _DATA_DIR.value
  data.image_size = _IMAGE_SIZE.value
  data.seed = _SEED.value
  data.vocab_size = _VOCAB.value
  data.train_scenes, data.validation_scenes = _TRAIN.value, _VAL.value
  data.test_scenes, data.shapes = _TEST.value, _SHAPES.value
  config = type(data)({"seed": 0, "batch_size": 1, "data": data})
  t0 = time.time()
  builder, tok = pipeline.prepare(config)
  print(f"dataset: {builder.data_dir}")
  print(f"tokenizer: {pipeline.tokenizer_path(builder)} (vocab_size={tok.vocab_size})")
  sizes = tfds_builders.split_sizes(builder)
  for split in pipeline.SPLITS:
    if split not in sizes:  # a manifest whose records left this split empty
      print(f"  {split}: no records (not built)")
      continue
    n = sizes[split]
    examples = len(pipeline.load_split(config, split, tok, builder)) if n else 0
    print(f"  {split}: {n} records, {examples} examples")
  print(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
  cli.run(main)
