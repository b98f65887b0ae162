r"""Does a trained object encoder give each object a slot of its own, and where does it put it?

For the first --num_images scenes of a shapes split, runs the workdir's object encoder
(`model.image_encoder=objects`) and reads its slot masks (each grouped pixel's weights over the
slots). Each object is the set of pixels of its colour; its *slot* is the one that holds most of
them. Prints:
  - the share of images whose six objects have six different slots (a merged pair breaks every
    "closest to" question about either object);
  - the mean weight of an object's pixels on its slot;
  - how far each object's slot centroid (from the slot's mask) is from the object's true centroid,
    in pixels: mean, 90th percentile and maximum.

  python experiments/proj/shapes/inspect_slots.py --workdir=DIR [--split=validation] [--num_images=64]
"""

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A workdir trained with model.image_encoder=objects.", required=True)
_SPLIT = flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Split to read scenes from.")
_NUM = flags.DEFINE_integer("num_images", 64, "Scenes to inspect.", lower_bound=1)


def slot_masks(encoder, params, images) -> np.ndarray:
  """[B, H W, K]: each pixel's weights over the slots (the masks the encoder's geometry is read off)."""
  _, state = encoder.apply(
    {"params": params}, images, mutable=["intermediates"], capture_intermediates=lambda m, _: m.name == "slots"
  )
  return np.asarray(state["intermediates"]["slots"]["__call__"][0][1])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mmjax.layers import pixel_coordinates
  from mmjax.projects.shapes import scenes as shapes
  from mmjax.projects.shapes.objects import ObjectEncoder, mask_geometry
  from mmjax.train import workdir as workdir_lib

  t = workdir_lib.load(_WORKDIR.value)
  if not t.config.model.image_encoder.endswith(":ObjectEncoder"):
    raise ValueError(
      f"{_WORKDIR.value} was trained with model.image_encoder="
      f"{t.config.model.image_encoder!r}; this inspects the 'objects' encoder."
    )
  if t.config.data.manifest:
    raise ValueError("inspect_slots reads object colours off shapes scenes; this workdir trained on a manifest.")
  split = t.data.split(_SPLIT.value)
  first = np.unique(split.index[:, 0], return_index=True)[1][: _NUM.value]  # one example per scene
  images = np.stack([split.example(int(i))["image"] for i in first])
  c = t.config.model.objects
  encoder = ObjectEncoder(**c.to_dict(), implementation="xla")
  masks = slot_masks(encoder, t.params["image_encoder"], images)
  size = images.shape[1]
  grouped = images.reshape(len(images), -1, 3)
  coords = pixel_coordinates(size, size)
  geometry = np.asarray(mask_geometry(jnp.asarray(masks), jnp.asarray(coords.reshape(-1, 2))))

  separate, weights, errors = 0, [], []
  for b in range(len(images)):
    slots = []
    for name in shapes.COLORS:
      rgb = np.asarray(shapes.COLOR_RGB[name])
      on = (grouped[b] == rgb).all(-1)
      if not on.any():
        continue
      share = masks[b][on].mean(0)
      slot = int(share.argmax())
      slots.append(slot)
      weights.append(share[slot])
      true = coords.reshape(-1, 2)[(images[b].reshape(-1, 3) == rgb).all(-1)].mean(0)
      errors.append(np.linalg.norm(geometry[b, slot, 1:3] - true) * size / 2)  # [-1, 1] units -> pixels
    separate += len(set(slots)) == len(slots)
  print(f"{_WORKDIR.value} (step {t.step}), {len(images)} {_SPLIT.value} scenes:")
  print(f"  images whose objects all have slots of their own: {separate} / {len(images)}")
  print(f"  mean weight of an object's pixels on its slot: {np.mean(weights):.3f}")
  print(
    f"  slot centroid error (pixels): mean {np.mean(errors):.2f}, 90th percentile "
    f"{np.percentile(errors, 90):.2f}, max {np.max(errors):.2f}"
  )


if __name__ == "__main__":
  cli.run(main)
