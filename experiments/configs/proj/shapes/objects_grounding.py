"""The shapes project's grounding job: experiments/configs/grounding.py with the project's object
encoder (objects.py) in place of the ViT.

  python experiments/train.py --workdir=DIR --config=experiments/configs/proj/shapes/objects_grounding.py

The encoder gives one token per object with its exact centroid and size (mmjax/projects/shapes/
objects.py), so a box is read off the object's token; the general model has to find the object in
its patches first. Both are measured in docs/results.md.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "../../grounding", arg)
  objects = config_files.sibling(__file__, "objects")
  c.model.image_encoder = objects.model.image_encoder
  c.model.objects = objects.model.objects
  c.optim.learning_rate = objects.optim.learning_rate
  return c
