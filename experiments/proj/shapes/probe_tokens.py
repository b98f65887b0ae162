r"""What do a trained model's image tokens still hold of each object: its colour, its shape?

For the objects the shapes parser (mmjax.projects.shapes.parse) finds in a split's images, takes
the image encoder's output at the token under each object's centroid, and the same from every one
of the encoder's own modules (flax capture_intermediates: the conv stem's maps, the patch
embedding, each block, the final norm), and fits linear probes (mmjax.projects.shapes.probe: ridge
regression, fit on two thirds of the objects, scored on the rest) for the object's colour and its
shape. One line per module, by name, with the majority rates after the accuracies. A decoder asked
for "the red circle" can only find it if the tokens it reads keep the colour: this shows where a
trained encoder loses it.

  python experiments/proj/shapes/probe_tokens.py --workdir=DIR [--split=test] [--max_images=1000]
"""

import jax
import numpy as np
from absl import app, flags

from mmjax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained VLM workdir (a shapes dataset).", required=True)
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split whose images to probe.")
_MAX = flags.DEFINE_integer("max_images", 1000, "Images to probe (at most).")


def encoder_maps(model):
  """A function (params, images) -> the [B, tokens, D] or [B, H, W, C] outputs of the image encoder
  ("image_encoder") and of its own modules ("image_encoder/stem_0", ...; not their submodules), by
  module path. Jitted once, so every batch of images reuses one compilation."""

  @jax.jit
  def run(params, images):
    _, state = model.apply(
      {"params": params}, images, method=lambda m, x: m.image_encoder(x), capture_intermediates=True
    )
    return state["intermediates"]

  def maps(params, images):
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(run(params, images))[0]:
      keys = [str(getattr(k, "key", k)) for k in path][:-2]  # drop "__call__" and the output's index
      if len(keys) <= 2 and np.ndim(value) in (3, 4) and np.shape(value)[0] == len(images):
        out["/".join(keys)] = np.asarray(value, np.float32)
    return out

  return maps


def at_point(maps: np.ndarray, image: int, y: float, x: float, size: int) -> np.ndarray:
  """The feature under pixel (y, x) of image `image`: a [B, H, W, C] map's cell, or a [B, N, D]
  token grid's (N = g * g tokens, row-major)."""
  if maps.ndim == 4:
    h, w = maps.shape[1:3]
    return maps[image, min(int(y * h / size), h - 1), min(int(x * w / size), w - 1)]
  g = int(round(np.sqrt(maps.shape[1])))
  return maps[image, min(int(y * g / size), g - 1) * g + min(int(x * g / size), g - 1)]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from mmjax.projects.shapes.parse import parse_image
  from mmjax.projects.shapes.probe import linear_probe_accuracy
  from mmjax.train import workdir as workdir_lib

  t = workdir_lib.load(_WORKDIR.value)
  split = t.data.split(_SPLIT.value)
  seen, images = set(), []
  for e in range(len(split)):
    scene = int(split.index[e, 0])
    if scene not in seen:
      seen.add(scene)
      images.append(np.asarray(split.image_of(e), np.uint8))
    if len(images) == _MAX.value:
      break
  images = np.stack(images)
  objects = [(i, o) for i, image in enumerate(images) for o in parse_image(image) if o.shape is not None]
  if len(objects) < 30:
    raise ValueError(f"the parser found {len(objects)} objects in {_SPLIT.value}; the probe needs at least 30.")
  encode = encoder_maps(t.setup.model)
  with t.setup.context():
    maps = {}
    for start in range(0, len(images), 100):
      for name, value in encode(t.params, images[start : start + 100]).items():
        maps.setdefault(name, []).append(value)
  colours = np.array([o.color for _, o in objects])
  shapes = np.array([o.shape for _, o in objects])
  size = images.shape[1]
  print(f"{len(objects)} objects in {len(images)} images of {_SPLIT.value}; probe accuracy on the held-out third:")
  print(f"  {'module':44s} {'output':14s} colour          shape")
  for name, parts in maps.items():
    value = np.concatenate(parts)
    x = np.stack([at_point(value, i, o.centroid[0], o.centroid[1], size) for i, o in objects])
    (c, cb), (s, sb) = linear_probe_accuracy(x, colours), linear_probe_accuracy(x, shapes)
    print(f"  {name:44s} {str(value.shape[1:]):14s} {c:.3f} ({cb:.3f})   {s:.3f} ({sb:.3f})")


if __name__ == "__main__":
  cli.run(main)
