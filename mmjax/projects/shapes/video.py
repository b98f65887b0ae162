"""Video clips of shapes scenes: the scene's objects moving in straight lines, bouncing off the
image borders.

* Each object gets a constant velocity (``sample_velocities``): speed uniform in
  [1, max(1, image_size * MAX_SPEED_FRACTION)] pixels per frame, direction uniform. They are drawn
  from the scene's rng *after* the scene (objects and questions) was sampled, so a scene's image,
  caption and questions are the same with or without video, and the same for any frame count.
* Object centres move inside ``shapes.centre_range`` (the range the still layouts use) and reflect
  off its ends like billiard balls, so every object stays whole inside the image with a 1-pixel
  background border. Positions are continuous; frames draw them rounded to the nearest pixel.
* Frame 0 is exactly ``shapes.render(objects)``. Objects may pass over each other; later colours
  (``shapes.COLORS`` order) are drawn on top, as in the still render.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from mmjax.projects.shapes import scenes as shapes

# Of the image side per frame: at 64 px and 8 frames an object travels at most 28 px, so motion is
# clearly visible yet most objects bounce at most once per clip.
MAX_SPEED_FRACTION = 1 / 16


def sample_velocities(rng: np.random.Generator, image_size: int, num_objects: int = len(shapes.COLORS)) -> np.ndarray:
  """float64 [num_objects, 2]: (dx, dy) in pixels per frame."""
  speed = rng.uniform(1.0, max(1.0, image_size * MAX_SPEED_FRACTION), size=num_objects)
  angle = rng.uniform(0.0, 2 * np.pi, size=num_objects)
  return np.stack([speed * np.cos(angle), speed * np.sin(angle)], axis=1)


def trajectories(
  objects: Sequence[shapes.SceneObject], velocities: np.ndarray, num_frames: int, image_size: int
) -> np.ndarray:
  """int [num_frames, num_objects, 2]: each object's (x, y) centre pixel in every frame."""
  lo, hi = shapes.centre_range(image_size)
  span = hi - lo
  start = np.array([(o.x, o.y) for o in objects], np.float64)
  t = np.arange(num_frames, dtype=np.float64)[:, None, None]
  # Reflection at both ends == folding the unbounded straight-line motion into [0, span]: the
  # path is periodic with period 2 * span, and its second half runs backwards.
  u = np.mod(start - lo + t * np.asarray(velocities, np.float64)[None], 2 * span)
  pos = lo + span - np.abs(u - span)
  return np.floor(pos + 0.5).astype(np.int64)


def render_clip(
  objects: Sequence[shapes.SceneObject], velocities: np.ndarray, num_frames: int, image_size: int
) -> np.ndarray:
  """uint8 [num_frames, S, S, 3]: the objects moving with ``velocities`` (frame 0: still render)."""
  paths = trajectories(objects, velocities, num_frames, image_size)
  return np.stack(
    [
      shapes.render([dataclasses.replace(o, x=int(x), y=int(y)) for o, (x, y) in zip(objects, frame)], image_size)
      for frame in paths
    ]
  )


def scene_clip(
  objects: Sequence[shapes.SceneObject], rng: np.random.Generator, num_frames: int, image_size: int
) -> np.ndarray:
  """A scene's clip: velocities drawn from the scene's ``rng`` (after the scene), then rendered."""
  return render_clip(objects, sample_velocities(rng, image_size, len(objects)), num_frames, image_size)
