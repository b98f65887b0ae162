"""SIGTERM / SIGINT: finish the current step, checkpoint, exit 0."""

from __future__ import annotations

import logging
import signal

import jax


class StopRequest:
  """Installs handlers that record a stop request instead of killing the process mid-step.

  On several hosts every process must agree on the step at which to stop, or their checkpoint
  writes would not match: `should_stop(step)` then also asks JAX's preemption sync point.
  """

  def __init__(self):
    self.requested = False
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread (e.g. inside a notebook worker): no handler
        pass

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C stops at once
    logging.warning("received signal %d: finishing this step, checkpointing and exiting.", signum)
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      try:
        if multihost_utils.reached_preemption_sync_point(step):
          return True
      except RuntimeError:  # the preemption service is not running (no distributed init)
        pass
      return bool(multihost_utils.process_allgather(self.requested).any())
    return self.requested

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
