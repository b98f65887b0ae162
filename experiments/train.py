r"""Trains, evaluates and samples a model; resumes by itself when --workdir has checkpoints.

  python experiments/train.py --workdir=/tmp/mmjax_default
  python experiments/train.py --workdir=DIR --config=experiments/configs/default.py \
      --config.total_steps=500 --config.data.manifest=/data/my_vqa.jsonl
  python experiments/train.py --workdir=DIR --config=experiments/configs/contrastive.py  # CLIP / SigLIP
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from mmjax import cli

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.", required=True)
config_flags.DEFINE_config_file(
  "config", os.path.join(_CONFIGS, "default.py"), "Experiment config file.", lock_config=True
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mmjax import distributed

  distributed.initialize_from_env()
  from mmjax.train.trainer import train_and_evaluate

  logging.set_verbosity(logging.WARNING)
  final = train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
  for k, v in sorted(final.items()):
    print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
  cli.run(main)
