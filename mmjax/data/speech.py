"""Spoken questions: text -> speech with the espeak-ng text-to-speech engine.

``synthesize(text, sample_rate)`` runs ``espeak-ng --stdout -v en`` (text on stdin, so a text
starting with "-" is never read as an option), decodes the WAV it writes (22050 Hz, 16-bit mono)
and resamples it to ``sample_rate`` (``wav.read_wav``). The result is mono int16.

espeak-ng is deterministic for a given version and voice, and fast (~30 ms per question). Clips
are cached per (text, sample rate, executable) in memory because the shapes questions are a few
hundred distinct strings repeated over thousands of scenes.

espeak-ng is an external program, not a Python package: when it is missing, ``synthesize`` raises
``SpeechUnavailableError`` saying what to install and which config flag turns spoken questions
off. ``ESPEAK_EXECUTABLE`` names the program (tests point it at a nonexistent one).
"""

from __future__ import annotations

import functools
import shutil
import subprocess

import numpy as np

from mmjax.data import wav

ESPEAK_EXECUTABLE = "espeak-ng"
VOICE = "en"
CONFIG_FLAG = "config.data.spoken_questions=False"


class SpeechUnavailableError(RuntimeError):
  """The text-to-speech program is not installed (or not on PATH)."""


def require(executable: str | None = None) -> str:
  """Full path of the espeak-ng program, or SpeechUnavailableError explaining how to get it."""
  executable = executable or ESPEAK_EXECUTABLE
  path = shutil.which(executable)
  if path is None:
    raise SpeechUnavailableError(
      f"spoken questions need the espeak-ng text-to-speech program, but {executable!r} was not "
      "found on PATH. Install it with `apt-get install espeak-ng` (Debian/Ubuntu) or "
      f"`brew install espeak-ng` (macOS), or turn spoken questions off with {CONFIG_FLAG}."
    )
  return path


def synthesize(text: str, sample_rate: int = 16000, executable: str | None = None) -> np.ndarray:
  """Mono int16 [n] speech of ``text`` at ``sample_rate`` (cached; the array is read-only)."""
  return _synthesize(text, int(sample_rate), require(executable))


@functools.lru_cache(maxsize=4096)
def _synthesize(text: str, sample_rate: int, executable: str) -> np.ndarray:
  proc = subprocess.run(
    [executable, "--stdout", "-v", VOICE], input=text.encode("utf-8"), capture_output=True, check=False
  )
  if proc.returncode != 0 or not proc.stdout:
    raise RuntimeError(
      f"{executable} failed on {text!r} (exit code {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}"
    )
  clip = wav.read_wav(proc.stdout, sample_rate)
  clip.flags.writeable = False  # shared by every caller through the cache
  return clip
