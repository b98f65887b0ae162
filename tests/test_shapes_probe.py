"""mmjax.projects.shapes.probe's linear probe against hand-made separable and random features."""

import numpy as np
import pytest

from mmjax.projects.shapes.probe import linear_probe_accuracy


def test_probe_reads_a_linearly_coded_label_and_not_a_random_one():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(900, 16))
  side = x[:, 3] - 0.5 * x[:, 7] > 0.2  # a label that is a linear function of the features
  acc, base = linear_probe_accuracy(x, side)
  assert acc > 0.9 and base < 0.7  # least squares on +-1 labels: not a perfect separator
  acc, base = linear_probe_accuracy(x, rng.random(900) < 0.5)  # a label the features do not hold
  assert abs(acc - 0.5) < 0.1
  # The majority rate is the held-out third's (the last 300 rows).
  labels = np.zeros(900, bool)
  labels[-60:] = True
  assert linear_probe_accuracy(x, labels)[1] == 240 / 300


def test_probe_reads_one_of_several_classes():
  """Three classes, each the nearest of three hand-placed centres in 2 of 16 random features: a
  one-vs-rest linear probe separates them; shuffled labels drop it to about the majority rate."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1200, 16))
  centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
  names = np.array(["red", "green", "blue"])
  labels = names[rng.integers(0, 3, 1200)]
  x[:, :2] = centres[[list(names).index(v) for v in labels]] + 0.5 * rng.normal(size=(1200, 2))
  acc, base = linear_probe_accuracy(x, labels)
  assert acc > 0.98 and base < 0.4
  acc, base = linear_probe_accuracy(x, rng.permutation(labels))
  assert abs(acc - 1 / 3) < 0.08


def test_probe_bad_shapes_are_errors():
  with pytest.raises(ValueError, match="features"):
    linear_probe_accuracy(np.ones((5, 2)), np.ones(4, bool))
