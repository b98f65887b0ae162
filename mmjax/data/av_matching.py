"""Audio-visual matching: "does the sound match the image?" -> yes / no.

Every record that has its own sound (``scene_audio``: a procedural dataset's sounds, or a manifest's
"audio" file) gets one matching example. ``pair_sounds`` decides which record's sound that example
hears: its own (answer ``MATCH``) or, for a ``mismatch_fraction`` of the records, the sound of a
*different* record whose sound is not the same clip (answer ``MISMATCH``). Exactly
``round(mismatch_fraction * n)`` of the n records with a sound are mismatched (fraction 0.5: as
many "no" as "yes"), chosen by a permutation drawn from ``seed``; partners are drawn from the same
generator, so the pairs are a deterministic function of the sounds and the seed.

Sounds are compared by ``sound_key`` (length + a digest of the samples): two scenes can sound the
same (same shape per colour, same left-to-right order), and such a pair is never called a mismatch.
"""

from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

import numpy as np

PROMPT = "does the sound match the image?"
MATCH, MISMATCH = "yes", "no"
_MAX_TRIES = 64  # random partner draws before falling back to an explicit list of candidates


def sound_key(clip: np.ndarray) -> Hashable | None:
  """Identity of a clip for ``pair_sounds``; None for an empty clip (a record without sound)."""
  clip = np.ascontiguousarray(clip)
  if clip.size == 0:
    return None
  return clip.shape, hashlib.sha1(clip.tobytes()).hexdigest()


def pair_sounds(sound_keys: Sequence[Hashable | None], mismatch_fraction: float, seed) -> np.ndarray:
  """int64 [n]: the record whose sound record i's matching example hears.

  ``i`` itself for a match, another index for a mismatch, -1 for a record without a sound (key
  None: it gets no matching example). ``seed``: anything ``np.random.default_rng`` takes.
  """
  if not 0.0 <= float(mismatch_fraction) <= 1.0:
    raise ValueError(f"config.data.av_mismatch_fraction={mismatch_fraction} must be in [0, 1].")
  keys = list(sound_keys)
  partner = np.full(len(keys), -1, np.int64)
  eligible = np.asarray([i for i, k in enumerate(keys) if k is not None], np.int64)
  partner[eligible] = eligible
  rng = np.random.default_rng(seed)
  order = rng.permutation(eligible)
  for i in order[: int(round(float(mismatch_fraction) * len(eligible)))]:
    for _ in range(_MAX_TRIES):
      j = int(eligible[rng.integers(len(eligible))])
      if keys[j] != keys[i]:
        break
    else:  # (almost) every record sounds like this one: pick among those that do not
      others = [int(j) for j in eligible if keys[j] != keys[i]]
      if not others:
        raise ValueError(
          f"audio-visual matching: all {len(eligible)} records of the split have the same sound, so "
          "no mismatched pair exists; use more scenes or config.data.av_mismatch_fraction=0."
        )
      j = others[int(rng.integers(len(others)))]
    partner[i] = j
  return partner


def answer(record: int, partner: int) -> str:
  return MATCH if int(partner) == int(record) else MISMATCH
