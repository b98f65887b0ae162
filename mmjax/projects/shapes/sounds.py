"""Object sounds: a short mono clip per shapes scene in which every object plays one tone.

The mapping (what a model must learn to hear):

* **colour -> pitch.** ``COLOR_FREQUENCIES``: six notes a perfect fourth (4:3) apart, A3 D4 G4 C5
  F5 B-flat5 (220-932 Hz, equal temperament; the pitch classes of a pentatonic scale plus one).
  Neighbours differ by a third of their frequency and no note is an octave of another, so each
  colour is easy to tell apart by ear and by FFT.
* **shape -> timbre.** ``harmonics(shape, ...)``: circle = sine (fundamental only); square = square
  wave (odd harmonics k = 1, 3, 5, ... at amplitude 1/k); triangle = triangle wave (odd harmonics
  at 1/k^2, alternating sign). Waves are summed from their harmonics below the Nyquist frequency
  only (additive synthesis), so nothing aliases.
* **position -> time.** The clip is cut into six equal slots; objects sound left to right (by
  column ``x``; ties by colour order), one per slot, so the order of the tones is the horizontal
  order of the objects. Each tone fills the middle ``TONE_FRACTION`` of its slot with short
  raised-cosine fades (no clicks), peak amplitude ``AMPLITUDE`` (every object equally loud).

The clip is a deterministic function of the objects, so it is as deterministic as the scene's
seed. Default: 16 kHz, 1.0 s, stored as int16 (``wav.to_int16``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mmjax.data import wav
from mmjax.projects.shapes import scenes as shapes

COLOR_FREQUENCIES = {  # Hz, in shapes.COLORS order
  "red": 220.00,  # A3
  "green": 293.66,  # D4
  "blue": 392.00,  # G4
  "orange": 523.25,  # C5
  "gray": 698.46,  # F5
  "yellow": 932.33,  # B-flat5
}
assert tuple(COLOR_FREQUENCIES) == shapes.COLORS


def harmonics(shape: str, max_k: int) -> dict[int, float]:
  """{harmonic number k <= max_k: amplitude relative to the fundamental} of ``shape``'s wave."""
  odd = range(1, max(1, max_k) + 1, 2)
  if shape == "circle":
    return {1: 1.0}
  if shape == "square":
    return {k: 1.0 / k for k in odd}
  if shape == "triangle":
    return {k: (-1.0) ** ((k - 1) // 2) / k**2 for k in odd}
  raise ValueError(f"unknown shape {shape!r}")


DEFAULT_SAMPLE_RATE = 16000
DEFAULT_DURATION = 1.0  # seconds
TONE_FRACTION = 0.8  # of a slot; the rest is silence between tones
FADE_SECONDS = 0.005
AMPLITUDE = 0.5


def tone(frequency: float, shape: str, num_samples: int, sample_rate: int) -> np.ndarray:
  """float64 [num_samples]: one band-limited ``shape`` tone, peak ``AMPLITUDE``, faded ends."""
  t = np.arange(num_samples) / sample_rate
  max_k = int(np.ceil((sample_rate / 2) / frequency)) - 1  # highest harmonic below Nyquist
  x = sum(a * np.sin(2 * np.pi * k * frequency * t) for k, a in harmonics(shape, max_k).items())
  x *= AMPLITUDE / max(np.abs(x).max(), 1e-12)
  fade = min(num_samples // 2, int(round(FADE_SECONDS * sample_rate)))
  if fade:
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
    x[:fade] *= ramp
    x[num_samples - fade :] *= ramp[::-1]
  return x


def slot_bounds(slot: int, num_slots: int, num_samples: int) -> tuple[int, int]:
  """[start, end) samples of the tone played in ``slot`` (the middle TONE_FRACTION of it)."""
  width = num_samples / num_slots
  margin = width * (1 - TONE_FRACTION) / 2
  return int(round(slot * width + margin)), int(round((slot + 1) * width - margin))


def scene_sound(
  objects: Sequence[shapes.SceneObject], sample_rate: int = DEFAULT_SAMPLE_RATE, duration: float = DEFAULT_DURATION
) -> np.ndarray:
  """int16 [round(duration * sample_rate)]: the objects' tones, left to right (see module doc)."""
  n = int(round(duration * sample_rate))
  out = np.zeros(n, np.float64)
  left_to_right = sorted(objects, key=lambda o: (o.x, shapes.COLORS.index(o.color)))
  for slot, obj in enumerate(left_to_right):
    start, end = slot_bounds(slot, len(left_to_right), n)
    out[start:end] = tone(COLOR_FREQUENCIES[obj.color], obj.shape, end - start, sample_rate)
  return wav.to_int16(out)
