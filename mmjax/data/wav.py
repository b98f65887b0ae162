"""Waveforms as the datasets store them: mono int16 at one sample rate.

* ``to_int16``: float waveform in [-1, 1] -> int16 (clipped), the stored form of every clip.
* ``resample``: band-limited resampling by truncating / zero-padding the spectrum (numpy only).
* ``read_wav``: a PCM WAV file (path or bytes; 8/16/24/32-bit, any channel count, any rate) ->
  mono int16 at the requested rate. Channels are averaged; the ``wave`` module reads only
  uncompressed integer PCM, so float or compressed WAVs are rejected with its error.
"""

from __future__ import annotations

import io
import os
import wave

import numpy as np

INT16_SCALE = 32768.0  # full scale: int16 v <-> float v / 32768, so 16-bit PCM round-trips exactly


def to_int16(x: np.ndarray) -> np.ndarray:
  """float [-1, 1] -> int16; values outside the range are clipped rather than wrapped."""
  v = np.round(np.asarray(x, np.float64) * INT16_SCALE)
  return np.clip(v, -32768, 32767).astype(np.int16)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
  """Resamples a 1-D waveform (float64 out, same scale as ``x``).

  Why the FFT route: truncating the spectrum is an ideal low-pass at the new Nyquist, so
  downsampling (e.g. espeak's 22050 Hz -> 16 kHz) does not alias, without needing scipy. The
  signal is treated as periodic; the clips here start and end near silence, so the wrap-around
  at the edges is negligible.
  """
  x = np.asarray(x, np.float64)
  if rate_in == rate_out or len(x) == 0:
    return x.copy()
  n_in = len(x)
  n_out = max(1, int(round(n_in * rate_out / rate_in)))
  spec = np.fft.rfft(x)
  keep = min(len(spec), n_out // 2 + 1)
  out_spec = np.zeros(n_out // 2 + 1, np.complex128)
  out_spec[:keep] = spec[:keep]
  return np.fft.irfft(out_spec, n_out) * (n_out / n_in)


def _pcm_to_float(frames: bytes, sample_width: int, channels: int) -> np.ndarray:
  """Interleaved PCM bytes -> float64 [n, channels] in [-1, 1]."""
  frame_bytes = sample_width * channels
  frames = frames[: len(frames) // frame_bytes * frame_bytes]  # streamed WAVs may end mid-frame
  if sample_width == 1:  # 8-bit WAV is unsigned
    x = (np.frombuffer(frames, np.uint8).astype(np.float64) - 128.0) / 128.0
  elif sample_width == 2:
    x = np.frombuffer(frames, "<i2").astype(np.float64) / INT16_SCALE
  elif sample_width == 3:  # 24-bit: sign-extend little-endian 3-byte integers
    b = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.int32)
    v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64) / float(1 << 23)
  elif sample_width == 4:
    x = np.frombuffer(frames, "<i4").astype(np.float64) / float(1 << 31)
  else:
    raise ValueError(f"unsupported WAV sample width {sample_width} bytes")
  return x.reshape(-1, channels)


def read_wav(source: str | os.PathLike | bytes, sample_rate: int | None) -> np.ndarray:
  """Mono int16 [n] at ``sample_rate`` (None: the file's own) from a PCM WAV path or its bytes."""
  f = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
  with wave.open(f, "rb") as w:
    channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
    # Streamed WAVs (espeak-ng --stdout) carry a placeholder frame count; readframes stops at
    # the real end of the data.
    frames = w.readframes(w.getnframes())
  mono = _pcm_to_float(frames, width, channels).mean(axis=1)
  return to_int16(resample(mono, rate, sample_rate or rate))
