"""Audio and video encoders: log-mel vs an independent float64 numpy reference, shapes, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import AudioEncoder, VideoEncoder, log_mel_spectrogram


def numpy_log_mel(wave, sr, n_fft, hop, n_mels, floor=1e-10):
  """Straightforward float64 reference: loop over frames, np.fft.rfft, loop-built mel triangles."""
  wave = np.asarray(wave, np.float64)
  pad = n_fft // 2
  out = []
  mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
  imel = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  pts = [imel(mel(0.0) + (mel(sr / 2) - mel(0.0)) * i / (n_mels + 1)) for i in range(n_mels + 2)]
  bins = np.arange(n_fft // 2 + 1) * sr / n_fft
  fb = np.zeros((n_fft // 2 + 1, n_mels))
  for m in range(n_mels):
    lo, c, hi = pts[m], pts[m + 1], pts[m + 2]
    for k, f in enumerate(bins):
      if lo < f <= c:
        fb[k, m] = (f - lo) / (c - lo)
      elif c < f < hi:
        fb[k, m] = (hi - f) / (hi - c)
  window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft) for n in range(n_fft)])
  for row in wave:
    x = np.pad(row, pad, mode="reflect")
    frames = []
    for start in range(0, len(x) - n_fft + 1, hop):
      spec = np.fft.rfft(x[start : start + n_fft] * window)
      frames.append(np.abs(spec) ** 2 @ fb)
    out.append(np.log(np.maximum(np.array(frames), floor)))
  return np.stack(out)


def test_log_mel_matches_numpy_reference():
  rng = np.random.default_rng(0)
  sr, n = 8000, 2000
  t = np.arange(n) / sr
  wave = np.stack([0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.normal(size=n), rng.normal(size=n) * 0.3]).astype(
    np.float32
  )
  got = np.asarray(log_mel_spectrogram(wave, sr, n_fft=256, hop=80, n_mels=20), np.float64)
  ref = numpy_log_mel(wave.astype(np.float64), sr, 256, 80, 20)
  assert got.shape == ref.shape == (2, n // 80 + 1, 20)
  np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-3)
  # A 440 Hz tone puts its energy in the mel band around 440 Hz.
  assert abs(got[0].mean(0).argmax() - ref[0].mean(0).argmax()) == 0


@pytest.mark.parametrize("frontend", ["logmel", "wav2vec"])
def test_audio_encoder_shapes_and_padding(frontend):
  rng = np.random.default_rng(1)
  wave = rng.normal(size=(2, 3200)).astype(np.float32)
  lengths = np.array([3200, 1600], np.int32)
  enc = AudioEncoder(
    width=32,
    depth=1,
    num_heads=2,
    mlp_dim=64,
    frontend=frontend,
    n_fft=400,
    hop=160,
    n_mels=16,
    conv_dim=16,
    implementation="xla",
  )
  params = enc.init(jax.random.key(0), wave, lengths)
  apply = jax.jit(enc.apply)
  (tokens, n) = apply(params, wave, lengths)
  expect = {"logmel": 6, "wav2vec": 9}[frontend]  # 3200/160+1=21 -> 11 -> 6 ; 3200/320 - 1 = 9
  assert tokens.shape == (2, expect, 32)
  assert int(n[0]) == expect and 0 < int(n[1]) < expect
  assert np.all(np.isfinite(np.asarray(tokens)))
  if frontend == "wav2vec":
    # Samples past a row's length do not change its valid tokens (masked normalisation + attention),
    # except through conv windows that straddle the boundary: compare well inside.
    changed = wave.copy()
    changed[1, 1600:] = rng.normal(size=1600)
    t2, _ = apply(params, changed, lengths)
    k = int(n[1]) - 1
    np.testing.assert_allclose(np.asarray(t2)[1, :k], np.asarray(tokens)[1, :k], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="frontend"):
    AudioEncoder(width=32, depth=1, num_heads=2, frontend="nope").init(jax.random.key(0), wave)


@pytest.mark.parametrize("posemb", ["sincos", "learn"])
def test_video_encoder_shapes(posemb):
  rng = np.random.default_rng(2)
  video = rng.integers(0, 256, (2, 4, 16, 16, 3)).astype(np.uint8)
  enc = VideoEncoder(
    width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, tubelet_t=2, posemb=posemb, implementation="xla"
  )
  out, _ = enc.init_with_output(jax.random.key(0), video)
  assert out.shape == (2, 2 * 2 * 2, 32)
  with pytest.raises(ValueError, match="tubelets"):
    enc.init(jax.random.key(0), video[:, :3])


def test_tubelet_embedding_is_a_strided_conv3d():
  """The einops patchify + Dense equals a Conv3D with stride = kernel (checked with lax.conv)."""
  rng = np.random.default_rng(3)
  video = rng.uniform(size=(1, 4, 8, 8, 3)).astype(np.float32)
  enc = VideoEncoder(width=8, depth=0, num_heads=2, patch_size=4, tubelet_t=2, posemb="learn", implementation="xla")
  params = jax.tree.map(jnp.zeros_like, enc.init(jax.random.key(0), video))
  kernel = jnp.asarray(rng.normal(size=(2 * 4 * 4 * 3, 8)), jnp.float32)
  params["params"]["tubelet_embed"]["kernel"] = kernel
  params = jax.tree.map(lambda x: x, params)
  # Drop the final norm's effect: compare the pre-norm embedding via capture_intermediates.
  _, state = enc.apply(params, video, capture_intermediates=True, mutable=["intermediates"])
  emb = state["intermediates"]["tubelet_embed"]["__call__"][0]
  conv = jax.lax.conv_general_dilated(
    jnp.asarray(video) * 2 - 1,
    kernel.reshape(2, 4, 4, 3, 8),
    window_strides=(2, 4, 4),
    padding="VALID",
    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
  )
  np.testing.assert_allclose(emb, conv.reshape(1, -1, 8), rtol=1e-5, atol=1e-5)
