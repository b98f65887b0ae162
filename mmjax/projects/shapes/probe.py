"""Linear probes: how much of a label a set of hidden states holds linearly."""

from __future__ import annotations

import numpy as np


def linear_probe_accuracy(x: np.ndarray, y: np.ndarray, ridge: float = 1.0) -> tuple[float, float]:
  """Fits a ridge-regression probe (features x [N, D] plus a bias) to the first two thirds of the
  rows and scores it on the last third. Labels y [N] of any kind (bool, int, str): the probe
  regresses each class's one-hot column and predicts the class with the largest output (for two
  classes the same as regressing +-1 labels and reading the sign).

  Returns (held-out accuracy, held-out majority rate): the rate is what a probe that reads nothing
  scores, so a probe holds the label only where its accuracy is clearly above it."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y)
  if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) < 3:
    raise ValueError(f"linear_probe_accuracy needs features [N, D] and N >= 3 labels; got {x.shape} and {y.shape}.")
  classes, index = np.unique(y, return_inverse=True)
  onehot = np.eye(len(classes))[index]
  x = np.concatenate([x, np.ones((len(x), 1))], 1)
  n = len(x) * 2 // 3
  w = np.linalg.solve(x[:n].T @ x[:n] + ridge * np.eye(x.shape[1]), x[:n].T @ onehot[:n])
  held = index[n:]
  majority = np.bincount(held, minlength=len(classes)).max() / len(held)
  return float((np.argmax(x[n:] @ w, 1) == held).mean()), float(majority)
