"""Audio encoder: waveform -> tokens [B, N, D].

Front ends (`frontend`):
  "logmel"   log-mel spectrogram computed in JAX (framing + Hann window + rfft, power spectrum, a
             triangular mel filterbank built in numpy, log with a floor), then two strided 1-D convs
             over time (Whisper / Conformer subsampling, x4 fewer frames).
  "wav2vec"  wav2vec 2.0's convolutional feature encoder on the raw (per-example normalised)
             waveform: strided 1-D convs (default x320: 20 ms frames at 16 kHz).
  "whisper"  Whisper's encoder stem on the waveform: `whisper_log_mel` (WhisperFeatureExtractor's
             log-mel: Slaney mel filters, log10, the last frame dropped, clamped to 8 decades below
             the clip's maximum, scaled), then conv (k3) + GELU, conv (k3, stride 2) + GELU (exact).
  "whisper_features"  the same stem on precomputed features [B, n_mels, frames] (the feature
             extractor's `input_features`), lengths in frames.
Then 1-D sin-cos positions (posemb "sincos"; "learn": a table initialised with the same codes,
Whisper's `embed_positions`), transformer blocks (`style`, `mlp_activation`, `head_dim` as in the
other towers; mmjax.pretrained sets them for Whisper), a final norm.

Convolutions are framing (a gather of windows) + `layers.Dense` over (window, channels), so their
kernels carry logical axes like every other parameter.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import layers
from mmjax.attention import MaskSpec

WAV2VEC_CONV = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2))  # (kernel, stride) per layer


def hz_to_mel(f):
  return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m):
  return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(
  n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
  """float32 [n_fft // 2 + 1, n_mels] triangular filters, equally spaced on the HTK mel scale."""
  fmax = sample_rate / 2 if fmax is None else fmax
  freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
  up = (freqs[:, None] - lower[None]) / (center - lower)[None]
  down = (upper[None] - freqs[:, None]) / (upper - center)[None]
  return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def frame(x: jax.Array, size: int, stride: int) -> jax.Array:
  """[B, T, ...] -> [B, N, size, ...]: windows of `size` steps every `stride` along axis 1."""
  n = (x.shape[1] - size) // stride + 1
  if n < 1:
    raise ValueError(f"frame: {x.shape[1]} samples are fewer than one window of {size}.")
  idx = np.arange(n)[:, None] * stride + np.arange(size)[None]
  return x[:, idx]


def num_stft_frames(num_samples: int, n_fft: int, hop: int) -> int:
  return num_samples // hop + 1  # centred frames (reflect padding of n_fft // 2 on both sides)


def power_spectrogram(wave: jax.Array, n_fft: int = 400, hop: int = 160) -> jax.Array:
  """float [B, T] waveform -> float32 [B, T // hop + 1, n_fft // 2 + 1]: centred frames (reflect
  padding), periodic Hann window, power |rfft|^2."""
  wave = jnp.asarray(wave, jnp.float32)
  pad = n_fft // 2
  x = jnp.pad(wave, ((0, 0), (pad, pad)), mode="reflect")
  frames = frame(x, n_fft, hop)  # [B, N, n_fft]
  window = jnp.asarray(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft), jnp.float32)
  spec = jnp.fft.rfft(frames * window, axis=-1)
  return jnp.real(spec) ** 2 + jnp.imag(spec) ** 2


def log_mel_spectrogram(
  wave: jax.Array,
  sample_rate: int = 16_000,
  n_fft: int = 400,
  hop: int = 160,
  n_mels: int = 80,
  fmin: float = 0.0,
  fmax: float | None = None,
  floor: float = 1e-10,
) -> jax.Array:
  """float [B, T] waveform -> float32 [B, T // hop + 1, n_mels] natural-log mel power spectrogram.

  Centred frames (reflect padding), periodic Hann window, power |rfft|^2, mel filterbank,
  log(max(mel, floor)).
  """
  power = power_spectrogram(wave, n_fft, hop)
  mel = power @ jnp.asarray(mel_filterbank(n_fft, n_mels, sample_rate, fmin, fmax))
  return jnp.log(jnp.maximum(mel, floor))


def hz_to_mel_slaney(f):
  """Slaney's mel scale (librosa's default, Whisper's): linear below 1 kHz, logarithmic above."""
  f = np.asarray(f, np.float64)
  return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)), 3.0 * f / 200.0)


def mel_to_hz_slaney(m):
  m = np.asarray(m, np.float64)
  return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


def mel_filterbank_slaney(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float = 8000.0):
  """float32 [n_fft // 2 + 1, n_mels]: triangular filters equally spaced on Slaney's mel scale, each scaled
  to unit area (Slaney norm), computed in float64 as transformers.audio_utils.mel_filter_bank does
  for WhisperFeatureExtractor (which casts them to float32)."""
  freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
  edges = mel_to_hz_slaney(np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2))
  diff = np.diff(edges)
  slopes = edges[None, :] - freqs[:, None]
  down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
  filters = np.maximum(0.0, np.minimum(down, up))
  return (filters * (2.0 / (edges[2:] - edges[:-2]))[None]).astype(np.float32)


def whisper_log_mel(
  wave: jax.Array, sample_rate: int = 16_000, n_fft: int = 400, hop: int = 160, n_mels: int = 80
) -> jax.Array:
  """float [B, T] waveform -> float32 [B, T // hop, n_mels]: WhisperFeatureExtractor's features
  (transposed) of a clip it does not pad further.

  Centred frames (reflect padding), periodic Hann window, power |rfft|^2, the last frame dropped,
  Slaney mel filters up to 8 kHz, log10(max(mel, 1e-10)), clamped to 8 decades below the clip's
  maximum, then (x + 4) / 4.
  """
  power = power_spectrogram(wave, n_fft, hop)[:, :-1]  # [B, T // hop, n_fft // 2 + 1]
  filters = jnp.asarray(mel_filterbank_slaney(n_fft, n_mels, sample_rate, 0.0, min(8000.0, sample_rate / 2)))
  # HIGHEST: features are inputs; a TF32 / bf16-pass matmul on an accelerator would move every
  # log-mel value by ~1e-3 relative.
  mel = jnp.matmul(power, filters, precision=jax.lax.Precision.HIGHEST)
  log = jnp.log10(jnp.maximum(mel, 1e-10))
  log = jnp.maximum(log, log.max(axis=(1, 2), keepdims=True) - 8.0)
  return (log + 4.0) / 4.0


def sincos_1d(n: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 1-D sin-cos positions [n, dim] (dim even)."""
  if dim % 2:
    raise ValueError(f"sin-cos positions need an even width; got {dim}.")
  omega = 1.0 / temperature ** (np.arange(dim // 2) / max(dim // 2 - 1, 1))
  ang = np.arange(n)[:, None] * omega[None]
  return np.concatenate([np.sin(ang), np.cos(ang)], axis=1).astype(np.float32)


class Conv1D(nn.Module):
  """Strided 1-D convolution over [B, T, C] ("valid" after `padding` zeros on both sides)."""

  features: int
  kernel: int
  stride: int
  padding: int = 0
  use_bias: bool = True
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.padding:
      x = jnp.pad(x, ((0, 0), (self.padding, self.padding), (0, 0)))
    windows = frame(x, self.kernel, self.stride)  # [B, N, k, C]
    return layers.Dense(
      self.features, ("conv_window", "channels"), ("embed",), use_bias=self.use_bias, dtype=self.dtype, name="kernel"
    )(windows)


def conv_out_len(length, kernel: int, stride: int, padding: int = 0):
  return (length + 2 * padding - kernel) // stride + 1


FRONTENDS = ("logmel", "wav2vec", "whisper", "whisper_features")


class AudioEncoder(nn.Module):
  """waveform float [B, T] (+ lengths [B]) -> (tokens [B, N, width], token lengths [B] or None).

  frontend="whisper_features" takes log-mel features [B, n_mels, frames] instead (lengths in frames).
  """

  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 512
  frontend: str = "logmel"  # FRONTENDS
  sample_rate: int = 16_000
  n_fft: int = 400
  hop: int = 160
  n_mels: int = 80
  conv_dim: int = 64  # wav2vec conv channels
  wav2vec_conv: tuple = WAV2VEC_CONV
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32
  # Pretrained towers (mmjax.pretrained: Whisper) set the rest. posemb "sincos" (fixed) or "learn"
  # (a [max_len, width] parameter that starts as the same sin-cos codes); pad_to_max_len: the
  # "whisper" frontend zero-pads the waveform to 2 * max_len * hop samples (Whisper's 30 s window,
  # as its feature extractor does), so a clip's tokens are those of the original model.
  posemb: str = "sincos"
  max_len: int = 1500
  pad_to_max_len: bool = False
  head_dim: int | None = None  # default width // num_heads
  mlp_activation: str = "gelu"  # layers.MLP_ACTIVATIONS
  style: dict | None = None  # layers.STYLE_FIELDS (blocks and the final norm)

  @nn.compact
  def __call__(self, wave, lengths=None):
    if self.frontend not in FRONTENDS:
      raise ValueError(f"AudioEncoder: unknown frontend {self.frontend!r}; use one of {FRONTENDS}.")
    if self.frontend == "whisper_features":
      if wave.ndim != 3 or wave.shape[1] != self.n_mels:
        raise ValueError(
          f"AudioEncoder(frontend='whisper_features') expects features [B, n_mels={self.n_mels}, frames]; "
          f"got {wave.shape}."
        )
    elif wave.ndim != 2:
      raise ValueError(f"AudioEncoder expects waveforms [B, T]; got {wave.shape}.")
    wave = wave.astype(jnp.float32)
    if self.frontend in ("whisper", "whisper_features"):
      x, n = self._whisper_stem(wave, lengths)
    elif self.frontend == "logmel":
      x = log_mel_spectrogram(wave, self.sample_rate, self.n_fft, self.hop, self.n_mels)
      x = (jnp.maximum(x, x.max(axis=(1, 2), keepdims=True) - 8.0 * math.log(10)) + 4.0 * math.log(10)) / (
        4.0 * math.log(10)
      )  # Whisper's dynamic-range clamp and scaling, in natural log
      n = None if lengths is None else lengths // self.hop + 1
      for i in range(2):
        x = nn.gelu(Conv1D(self.width, 3, 2, padding=1, dtype=self.dtype, name=f"conv_{i}")(x.astype(self.dtype)))
        n = None if n is None else conv_out_len(n, 3, 2, 1)
    elif self.frontend == "wav2vec":
      if lengths is None:
        mean, var = wave.mean(1, keepdims=True), wave.var(1, keepdims=True)
        valid = None
      else:
        valid = (jnp.arange(wave.shape[1])[None] < lengths[:, None]).astype(jnp.float32)
        count = jnp.maximum(valid.sum(1, keepdims=True), 1.0)
        mean = (wave * valid).sum(1, keepdims=True) / count
        var = (((wave - mean) * valid) ** 2).sum(1, keepdims=True) / count
      x = ((wave - mean) / jnp.sqrt(var + 1e-5))[..., None]
      if valid is not None:
        x = x * valid[..., None]
      n = lengths
      for i, (k, s) in enumerate(self.wav2vec_conv):
        x = Conv1D(self.conv_dim, k, s, use_bias=False, dtype=self.dtype, name=f"conv_{i}")(x.astype(self.dtype))
        if i == 0:
          x = nn.GroupNorm(
            num_groups=None,
            group_size=1,
            dtype=self.dtype,
            scale_init=layers.param_with_axes(nn.initializers.ones, ("norm",)),
            bias_init=layers.param_with_axes(nn.initializers.zeros, ("norm",)),
            name="norm_0",
          )(x)
        x = nn.gelu(x)
        n = None if n is None else conv_out_len(n, k, s)
      x = layers.Norm(self.dtype, name="norm_features")(x)
      x = layers.Dense(self.width, ("channels",), ("embed",), dtype=self.dtype, name="proj")(x)
    x = layers.constrain_tokens(x + self._positions(x.shape[1]).astype(x.dtype)[None])
    n = None if n is None else jnp.clip(n, 0, x.shape[1]).astype(jnp.int32)
    mask = None if n is None else MaskSpec(kv_valid_len=n)
    style = layers.block_style(self.style, "config.model.audio")
    for i in range(self.depth):
      x = layers.TransformerBlock(
        self.num_heads,
        self.head_dim or self.width // self.num_heads,
        self.mlp_dim,
        implementation=self.implementation,
        dtype=self.dtype,
        mlp_activation=self.mlp_activation,
        **style,
        name=f"block_{i}",
      )(x, self_mask=mask)
    norm = layers.Norm(self.dtype, style.get("norm", "layernorm"), style.get("norm_eps", 1e-6), name="norm")
    return norm(x), n

  def _positions(self, n: int) -> jax.Array:
    if self.posemb == "sincos":
      return jnp.asarray(sincos_1d(n, self.width))
    if self.posemb != "learn":
      raise ValueError(f"AudioEncoder: unknown posemb {self.posemb!r}; use 'sincos' or 'learn'.")
    if n > self.max_len:
      raise ValueError(
        f"AudioEncoder: {n} audio tokens exceed max_len={self.max_len} (the learned position table); use shorter clips."
      )
    table = self.param(
      "posemb",
      layers.param_with_axes(
        lambda key, shape, dtype=jnp.float32: jnp.asarray(sincos_1d(*shape), dtype), ("pos", "embed")
      ),
      (self.max_len, self.width),
      jnp.float32,
    )
    return table[:n]

  def _whisper_stem(self, x, lengths):
    """Whisper's log-mel features and conv stem: -> ([B, frames // 2 (rounded up), width], valid tokens or None)."""
    if self.frontend == "whisper":
      if self.pad_to_max_len:
        window = 2 * self.max_len * self.hop
        if x.shape[1] > window:
          raise ValueError(
            f"AudioEncoder: a clip of {x.shape[1]} samples is longer than the {window} samples "
            f"(2 * max_len * hop) of the encoder's window."
          )
        x = jnp.pad(x, ((0, 0), (0, window - x.shape[1])))
      x = whisper_log_mel(x, self.sample_rate, self.n_fft, self.hop, self.n_mels)  # [B, frames, n_mels]
      n = None if lengths is None else lengths // self.hop + 1  # frames whose centre window sees the clip
    else:
      x = jnp.swapaxes(x, 1, 2)
      n = lengths
    for i, stride in enumerate((1, 2)):
      conv = Conv1D(self.width, 3, stride, padding=1, dtype=self.dtype, name=f"conv_{i}")
      x = nn.gelu(conv(x.astype(self.dtype)), approximate=False)
      n = None if n is None else conv_out_len(n, 3, stride, 1)
    return x, n
