"""Tests for the optional audio and video of mmjax.data: object sounds, video clips, spoken
questions (espeak-ng), WAV reading, and their records in the shapes and manifest datasets.

References are computed independently of the code under test: tone frequencies and harmonics by
FFT, bouncing motion by a step-by-step simulation, WAV files written with the ``wave`` module.
"""

import shutil
import wave

import numpy as np
import pytest
from PIL import Image

from mmjax.data import batching, pipeline, prepare, schema, speech, tfds_builders, wav
from mmjax.data.examples import TASK_VQA
from mmjax.projects.shapes import data as shapes_dataset, scenes as shapes, sounds, video
from tests.test_data import (
  _cfg,
  _write_images,
  _write_manifest,
  assert_generation_failure_cleans_up,
  assert_line_3_error,
)

needs_espeak = pytest.mark.skipif(
  shutil.which("espeak-ng") is None,
  reason="espeak-ng is not installed (apt-get install espeak-ng); CI installs it in .ci/run",
)

SR = 16000


def _spectrum(x, sample_rate, n_fft=None):
  """|rfft| of a Hann-windowed segment, zero-padded to 1 Hz bins; (freqs, magnitudes)."""
  x = np.asarray(x, np.float64)
  n_fft = n_fft or sample_rate
  mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n_fft))
  return np.fft.rfftfreq(n_fft, 1 / sample_rate), mag


def _peak_hz(x, sample_rate):
  f, mag = _spectrum(x, sample_rate)
  return f[np.argmax(mag)]


def _amplitude_at(freqs, mag, hz, tol=4.0):
  return mag[np.abs(freqs - hz) <= tol].max()


def _slot(x, i, n_slots=6):
  """The middle 60% of time slot ``i`` (inside the tone, away from its fades)."""
  w = len(x) / n_slots
  return x[int(i * w + 0.2 * w) : int((i + 1) * w - 0.2 * w)]


# ------------------------------------------------------------------------------------------------
# Object sounds


def test_colour_table_is_well_separated():
  f = np.array([sounds.COLOR_FREQUENCIES[c] for c in shapes.COLORS])
  assert ((220 <= f) & (f <= 1000)).all()
  ratios = f[None, :] / f[:, None]
  off_diag = ratios[~np.eye(6, dtype=bool)]
  assert (np.abs(np.log2(off_diag)) > 0.3).all()  # > ~a major third apart
  assert not np.isclose(off_diag, 2.0, rtol=0.02).any()  # no octaves


def test_tone_pitch_recovers_colour_in_left_to_right_order():
  for i in range(5):
    scene = shapes.generate_scene([11, 0, i])
    x = sounds.scene_sound(scene.objects)
    assert x.dtype == np.int16 and x.shape == (SR,)
    order = sorted(scene.objects, key=lambda o: (o.x, shapes.COLORS.index(o.color)))
    for slot, obj in enumerate(order):
      peak = _peak_hz(_slot(x, slot), SR)
      assert abs(peak - sounds.COLOR_FREQUENCIES[obj.color]) <= 3, (i, slot, obj, peak)


def _one_shape_sound(shape, sample_rate=SR):
  objs = [shapes.SceneObject(c, shape, x=10 + 8 * k, y=20) for k, c in enumerate(shapes.COLORS)]
  return sounds.scene_sound(objs, sample_rate)


@pytest.mark.parametrize("shape,h3,h5", [("circle", 0.0, 0.0), ("square", 1 / 3, 1 / 5), ("triangle", 1 / 9, 1 / 25)])
def test_shape_timbre(shape, h3, h5):
  x = _one_shape_sound(shape).astype(np.float64)
  for slot, color in enumerate(shapes.COLORS):
    f0 = sounds.COLOR_FREQUENCIES[color]
    freqs, mag = _spectrum(_slot(x, slot), SR)
    a1 = _amplitude_at(freqs, mag, f0)
    assert _amplitude_at(freqs, mag, 2 * f0) < 0.01 * a1  # no even harmonics
    assert abs(_amplitude_at(freqs, mag, 3 * f0) / a1 - h3) < 0.02, (shape, color)
    assert abs(_amplitude_at(freqs, mag, 5 * f0) / a1 - h5) < 0.02, (shape, color)


def test_square_wave_is_band_limited():
  # Aliased harmonics would land between the odd harmonics; all energy must sit on them.
  x = _one_shape_sound("square").astype(np.float64)
  for slot, color in enumerate(shapes.COLORS):
    f0 = sounds.COLOR_FREQUENCIES[color]
    freqs, mag = _spectrum(_slot(x, slot), SR)
    k = freqs / f0
    # 40 Hz: the Hann main lobe of an 80 ms segment is +-25 Hz wide.
    on_odd = (np.abs(k - np.round(k)) * f0 <= 40) & (np.round(k) % 2 == 1)
    assert (mag[~on_odd] ** 2).sum() < 1e-3 * (mag**2).sum(), color


def test_sound_deterministic_and_rate():
  a = sounds.scene_sound(shapes.generate_scene([2, 1, 5]).objects)
  b = sounds.scene_sound(shapes.generate_scene([2, 1, 5]).objects)
  c = sounds.scene_sound(shapes.generate_scene([2, 1, 6]).objects)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert 0.3 * 32768 < np.abs(a).max() < 32768
  x8 = _one_shape_sound("circle", 8000)
  assert x8.shape == (8000,) and abs(_peak_hz(_slot(x8, 0), 8000) - 220) <= 3


# ------------------------------------------------------------------------------------------------
# Video


def _simulate(objects, velocities, num_frames, image_size):
  """Step-by-step billiard motion of the centres inside the 1-px-border range; [T, n, 2]."""
  half = shapes.object_size(image_size) // 2
  lo, hi = half + 1, image_size - half - 2
  p = np.array([(o.x, o.y) for o in objects], np.float64)
  v = np.array(velocities, np.float64)
  out = []
  for _ in range(num_frames):
    out.append(np.floor(p + 0.5).astype(int))
    p = p + v
    for _ in range(4):  # at most a few reflections per step
      over, under = p > hi, p < lo
      p = np.where(over, 2 * hi - p, np.where(under, 2 * lo - p, p))
      v = np.where(over | under, -v, v)
  return np.array(out)


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_video_frames_bounce_and_stay_in_bounds(image_size):
  for i in range(4):
    rng = np.random.default_rng([4, 0, i])
    scene = shapes.generate_scene(rng, image_size)
    vel = video.sample_velocities(rng, image_size)
    t = 24  # long enough to bounce
    clip = video.render_clip(scene.objects, vel, t, image_size)
    assert clip.shape == (t, image_size, image_size, 3) and clip.dtype == np.uint8
    np.testing.assert_array_equal(clip[0], scene.image)
    speeds = np.hypot(vel[:, 0], vel[:, 1])
    assert (speeds >= 1).all() and (speeds <= max(1, image_size / 16) + 1e-9).all()
    sim = _simulate(scene.objects, vel, t, image_size)
    yellow = shapes.COLOR_RGB["yellow"]  # drawn last: never hidden
    area = (clip[0] == yellow).all(-1).sum()
    for f in range(t):
      objs = [shapes.SceneObject(o.color, o.shape, int(x), int(y)) for o, (x, y) in zip(scene.objects, sim[f])]
      np.testing.assert_array_equal(clip[f], shapes.render(objs, image_size))
      border = np.concatenate([clip[f, 0], clip[f, -1], clip[f, :, 0], clip[f, :, -1]])
      assert (border == shapes.BACKGROUND).all()
      assert (clip[f] == yellow).all(-1).sum() == area
    assert all(not np.array_equal(clip[f], clip[0]) for f in range(1, 4))


def test_scene_clip_deterministic_and_leaves_scene_unchanged():
  def make():
    rng = np.random.default_rng([6, 2, 3])
    scene = shapes.generate_scene(rng, 64)
    return scene, video.scene_clip(scene.objects, rng, 8, 64)

  (s1, c1), (_, c2) = make(), make()
  np.testing.assert_array_equal(c1, c2)
  plain = shapes.generate_scene([6, 2, 3], 64)
  assert s1.questions == plain.questions and np.array_equal(s1.image, plain.image)
  np.testing.assert_array_equal(c1[0], plain.image)


# ------------------------------------------------------------------------------------------------
# WAV reading and speech


def _write_wav(path, channels_data, rate, width=2):
  """float [channels, n] in [-1, 1] -> a PCM WAV file written with the wave module."""
  x = np.asarray(channels_data, np.float64).T  # [n, channels]
  if width == 1:
    raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
  elif width == 2:
    raw = np.round(x * 32767).astype("<i2").tobytes()
  else:  # 24-bit
    v = np.ascontiguousarray(np.round(x * (2**23 - 1)).astype("<i4"))
    raw = v.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
  with wave.open(str(path), "wb") as w:
    w.setnchannels(x.shape[1])
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(raw)


def _sine(hz, seconds, rate, amp=0.5):
  return amp * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)


@pytest.mark.parametrize("rate,width", [(16000, 2), (22050, 2), (44100, 3), (8000, 1)])
def test_read_wav_mixes_down_and_resamples(tmp_path, rate, width):
  p = tmp_path / "a.wav"
  _write_wav(p, [_sine(440, 0.5, rate), _sine(660, 0.5, rate)], rate, width)  # stereo
  x = wav.read_wav(p, SR)
  assert x.dtype == np.int16 and abs(len(x) - SR // 2) <= 1
  seg = x[1000:-1000]
  freqs, mag = _spectrum(seg, SR)
  # Mixed down by averaging: each channel's tone keeps half its amplitude, 0.25 of full scale
  # (a Hann-windowed sine of amplitude A peaks at A * n / 4 in the spectrum).
  expected = 0.25 * 32768 * len(seg) / 4
  for hz in (440, 660):
    assert abs(_amplitude_at(freqs, mag, hz) / expected - 1) < 0.05, hz
  assert mag[(freqs > 700) | (freqs < 400)].max() < 0.02 * expected  # nothing else (no aliasing)


def test_read_wav_16bit_same_rate_is_exact(tmp_path):
  p = tmp_path / "a.wav"
  data = np.random.default_rng(0).integers(-32768, 32767, 1000).astype("<i2")
  with wave.open(str(p), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(SR)
    w.writeframes(data.tobytes())
  np.testing.assert_array_equal(wav.read_wav(p, SR), data)


@needs_espeak
def test_speech_nonsilent_and_grows_with_text():
  short = speech.synthesize("red")
  long = speech.synthesize("how many objects have the same shape as the yellow object?")
  for x in (short, long):
    assert x.dtype == np.int16 and x.ndim == 1
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 300  # not silence
  assert 0.1 * SR < len(short) < len(long) < 6 * SR
  assert len(long) > 2 * len(short)
  half = speech.synthesize("red", sample_rate=8000)
  assert abs(len(half) - len(short) / 2) <= 2
  assert speech.synthesize("red") is short  # cached per text
  assert not short.flags.writeable


def test_speech_missing_program_error(monkeypatch):
  for kwargs in ({"executable": "espeak-ng-not-installed-xyz"}, {}):
    if not kwargs:
      monkeypatch.setattr(speech, "ESPEAK_EXECUTABLE", "espeak-ng-not-installed-xyz")
    with pytest.raises(speech.SpeechUnavailableError) as e:
      speech.synthesize("what shape is the red object?", **kwargs)
    text = str(e.value)
    for part in (
      "espeak-ng-not-installed-xyz",
      "apt-get install espeak-ng",
      "brew install espeak-ng",
      "config.data.spoken_questions=False",
    ):
      assert part in text, text


def test_shapes_build_without_espeak_fails_cleanly(tmp_path, monkeypatch):
  monkeypatch.setattr(speech, "ESPEAK_EXECUTABLE", "espeak-ng-not-installed-xyz")
  cfg = shapes_dataset.shapes_config(
    image_size=32, train_scenes=2, validation_scenes=1, test_scenes=1, spoken_questions=True
  )
  with pytest.raises(speech.SpeechUnavailableError):
    shapes_dataset.prepare_shapes(str(tmp_path / "data"), cfg)
  assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*"))


# ------------------------------------------------------------------------------------------------
# Shapes dataset with media


def _tiny_cfg(data_dir, **data):
  c = _cfg(data_dir, **({"train_scenes": 3, "validation_scenes": 1, "test_scenes": 1, "image_size": 32} | data))
  c.batch_size = 4
  return c


def test_media_off_keeps_config_names():
  assert shapes_dataset.shapes_config().name == "s64_k3_n12000-500-1000_q2-2-4_seed0"
  names = {
    shapes_dataset.shapes_config(**kw).name
    for kw in (
      {},
      {"spoken_questions": True},
      {"object_sounds": True},
      {"video_frames": 8},
      {"video_frames": 4},
      {"object_sounds": True, "audio_sample_rate": 8000},
      {"spoken_questions": True, "object_sounds": True, "video_frames": 8},
    )
  }
  assert len(names) == 7
  d = shapes_dataset.default_data_config()
  assert (d.spoken_questions, d.shapes.object_sounds, d.video_frames) == (False, False, 0)


@needs_espeak
def test_shapes_build_with_all_media(tmp_path):
  cfg = _tiny_cfg(tmp_path, spoken_questions=True, object_sounds=True, video_frames=4)
  builder, tok = prepare.prepare(cfg)
  assert str(builder.data_dir).split("/")[-2].endswith("_sq_snd_sr16000_v4")
  src = builder.as_data_source("train")
  for i in range(len(src)):
    r = src[i]
    index = int(r["id"].decode().rsplit("_", 1)[1])
    scene = shapes.generate_scene(shapes.scene_seed(0, "train", index), 32)
    assert [q.decode() for q in r["questions"]] == scene.questions  # scene unchanged by media
    np.testing.assert_array_equal(r["image"], scene.image)
    clips = schema.unpack_clips(r)
    assert len(clips) == len(scene.questions) == len(r["question_audio_lengths"])
    for q, clip in zip(scene.questions, clips):
      assert clip.dtype == np.int16 and len(clip) > 0.3 * SR
      np.testing.assert_array_equal(clip, speech.synthesize(q))
    assert r["scene_audio"].dtype == np.int16 and r["scene_audio"].shape == (SR,)
    np.testing.assert_array_equal(r["scene_audio"], sounds.scene_sound(scene.objects))
    assert r["video"].shape == (4, 32, 32, 3) and r["video"].dtype == np.uint8
    np.testing.assert_array_equal(r["video"][0], scene.image)
    assert not np.array_equal(r["video"][1], scene.image)

  data = prepare.load_split(cfg, "train", tok, builder)
  n = int(round(cfg.data.max_audio_seconds * SR))
  it = batching.train_batches(cfg, data)
  for batch in [next(it) for _ in range(6)]:
    assert batch["audio"].shape == (4, n) and batch["audio"].dtype == np.int16
    assert batch["video"].shape == (4, 4, 32, 32, 3) and batch["video"].dtype == np.uint8
    for b in range(4):
      eid = int(batch["example_id"][b])
      ri, j = data.index[eid]
      rec = src[int(ri)]
      want = (
        schema.unpack_clips(rec)[j] if batch["task"][b] == TASK_VQA else rec["scene_audio"]
      )  # captions: the scene sound
      assert batch["audio_len"][b] == len(want)
      np.testing.assert_array_equal(batch["audio"][b, : len(want)], want)
      assert (batch["audio"][b, len(want) :] == 0).all()
      np.testing.assert_array_equal(batch["video"][b], rec["video"])
      assert batch["video_len"][b] == 4
  pad = data.padding_example()
  assert pad["audio_len"] == 0 and pad["video_len"] == 0 and not pad["audio"].any()


def test_shapes_object_sounds_only(tmp_path):
  cfg = _tiny_cfg(tmp_path, object_sounds=True, train_scenes=2)
  cfg.data.max_audio_seconds = 0.5
  data = pipeline.Data(cfg)
  split = data.split("train")
  assert set(data.builder.info.features.keys()) == (set(schema.record_features(32).keys()) | {"scene_audio"})
  for eid in range(len(split)):
    ex = split.example(eid)
    assert "video" not in ex and ex["audio_len"] == SR // 2  # cut to max_audio_seconds
    rec = data.builder.as_data_source("train")[int(split.index[eid][0])]
    np.testing.assert_array_equal(ex["audio"], rec["scene_audio"][: SR // 2])


# ------------------------------------------------------------------------------------------------
# Manifests with media


def _write_media(d):
  """Audio and video files next to the test images of test_data._write_images."""
  (d / "snd").mkdir()
  _write_wav(d / "snd/mono8k.wav", [_sine(300, 0.5, 8000)], 8000)
  _write_wav(d / "snd/stereo44k.wav", [_sine(500, 0.25, 44100)] * 2, 44100)
  _write_wav(d / "snd/empty.wav", np.zeros((1, 0)), 16000)
  (d / "snd/garbage.wav").write_bytes(b"RIFF not really a wav file")
  (d / "vid/frames").mkdir(parents=True)
  for i in (1, 2, 10):  # natural order: 1, 2, 10 (lexicographic would put 10 before 2)
    Image.fromarray(np.full((20, 30, 3), 20 * i, np.uint8)).save(d / f"vid/frames/f{i}.png")
  (d / "vid/frames/.DS_Store").write_bytes(b"hidden files are not frames")
  np.save(d / "vid/clip.npy", np.stack([np.full((24, 24, 3), 40 * i, np.uint8) for i in range(5)]))
  (d / "vid/empty").mkdir()
  (d / "vid/broken").mkdir()
  (d / "vid/broken/f0.png").write_bytes(b"not an image")
  np.save(d / "vid/float.npy", np.zeros((2, 8, 8, 3), np.float32))
  np.save(d / "vid/gray.npy", np.zeros((2, 8, 8), np.uint8))
  (d / "vid/clip.mp4").write_bytes(b"\x00")


MEDIA_LINES = [
  {
    "image": "imgs/rgb.png",
    "question": "what is it?",
    "answer": "noise",
    "split": "train",
    "audio": "snd/mono8k.wav",
    "video": "vid/frames",
  },
  {"image": "imgs/rgb.png", "caption": "colourful noise", "audio": "snd/mono8k.wav"},
  {
    "image": "imgs/gray.jpg",
    "caption": "grey static",
    "split": "train",
    "audio": "snd/stereo44k.wav",
    "video": "vid/clip.npy",
  },
  {"image": "imgs/x0.png", "question": "how bright?", "answer": "0", "split": "train"},
  {"image": "imgs/x1.png", "caption": "dark", "split": "validation"},  # (TFDS needs no empty
  {"image": "imgs/x2.png", "caption": "dark", "split": "test", "video": "vid/clip.npy"},  # split)
]


def test_manifest_media_builds_and_reads(tmp_path):
  src = tmp_path / "src"
  _write_images(src)
  _write_media(src)
  lines = [dict(MEDIA_LINES[0], audio=str(src / "snd/mono8k.wav"))] + MEDIA_LINES[1:]  # absolute
  m = _write_manifest(src, lines)
  data_dir = tmp_path / "data"
  builder = tfds_builders.prepare_manifest(str(m), str(data_dir), image_size=16, video_frames=4)
  assert str(builder.data_dir).split("/")[-2].endswith("_snd_sr16000_v4")
  ds = builder.as_data_source("train")
  recs = {ds[i]["id"].decode(): ds[i] for i in range(len(ds))}
  assert set(recs) == {"imgs/rgb.png", "imgs/gray.jpg", "imgs/x0.png"}

  rgb, gray, plain = recs["imgs/rgb.png"], recs["imgs/gray.jpg"], recs["imgs/x0.png"]
  assert abs(len(rgb["scene_audio"]) - SR // 2) <= 1
  assert abs(_peak_hz(rgb["scene_audio"], SR) - 300) <= 2
  assert abs(len(gray["scene_audio"]) - SR // 4) <= 1
  assert abs(_peak_hz(gray["scene_audio"], SR) - 500) <= 2
  assert rgb["video"].shape == gray["video"].shape == (4, 16, 16, 3)
  # 3 frames padded by repeating the last; 5 frames -> round(linspace(0, 4, 4)) = 0, 1, 3, 4.
  assert [int(f[0, 0, 0]) for f in rgb["video"]] == [20, 40, 200, 200]
  assert [int(f[0, 0, 0]) for f in gray["video"]] == [0, 40, 120, 160]
  assert plain["scene_audio"].shape == (0,) and plain["video"].shape == (0, 16, 16, 3)

  cfg = _tiny_cfg(data_dir, manifest=str(m), image_size=16, video_frames=4)
  data = prepare.load_split(cfg, "train")
  n = int(round(cfg.data.max_audio_seconds * SR))
  seen = set()
  for eid in range(len(data)):
    ex = data.example(eid)
    assert ex["audio"].shape == (n,) and ex["video"].shape == (4, 16, 16, 3)
    rid = data.record_id(eid)
    seen.add(rid)
    rec = recs[rid]
    assert ex["audio_len"] == len(rec["scene_audio"])
    np.testing.assert_array_equal(ex["audio"][: len(rec["scene_audio"])], rec["scene_audio"])
    assert ex["video_len"] == len(rec["video"])
    if len(rec["video"]):
      np.testing.assert_array_equal(ex["video"], rec["video"])
    else:
      assert not ex["video"].any()
  assert seen == set(recs)


def test_manifest_without_media_keeps_name_and_features(tmp_path):
  src = tmp_path / "src"
  _write_images(src)
  m = _write_manifest(src, MEDIA_LINES[3:5])
  plain = tfds_builders.manifest_config(m, 32)
  assert plain.name.endswith("_s32_seed0")
  assert tfds_builders.manifest_config(m, 32, video_frames=8).name == plain.name  # no videos


BAD_MEDIA = [
  ({"audio": "snd/missing.wav"}, "audio", "not found"),
  ({"audio": "snd/garbage.wav"}, "audio", "cannot read audio"),
  ({"audio": "snd/empty.wav"}, "audio", "no samples"),
  ({"audio": 3}, "audio", "must be a string"),
  ({"audio": "snd/stereo44k.wav"}, "audio", "already assigned"),
  ({"video": "vid/missing"}, "video", "not found"),
  ({"video": "vid/empty"}, "video", "no frame images"),
  ({"video": "vid/broken"}, "video", "cannot read image"),
  ({"video": "vid/float.npy"}, "video", "expected a uint8 array [T, H, W, 3]"),
  ({"video": "vid/gray.npy"}, "video", "expected a uint8 array [T, H, W, 3]"),
  ({"video": "vid/clip.mp4"}, "video", "folder of frame images or an .npy"),
  ({"video": "snd/mono8k.wav", "image": "imgs/gray.jpg"}, "video", "folder of frame images"),
]


@pytest.mark.parametrize(
  "extra,key,msg",
  BAD_MEDIA + [({"video": "vid/frames"}, "video", "video_frames")],
  ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_MEDIA)] + ["no-frames"],
)
def test_manifest_bad_media(tmp_path, extra, key, msg):
  src = tmp_path / "src"
  _write_images(src)
  _write_media(src)
  bad = {"image": "imgs/rgb.png", "caption": "x"} | extra
  m = _write_manifest(src, [MEDIA_LINES[1], MEDIA_LINES[3], bad])
  assert_line_3_error(m, tmp_path / "data", key, msg, video_frames=0 if msg == "video_frames" else 4)


@pytest.mark.parametrize("loader", ["load_audio", "load_video"])
def test_manifest_media_generation_failure_cleans_up(tmp_path, monkeypatch, loader):
  src = tmp_path / "src"
  _write_images(src)
  _write_media(src)
  assert_generation_failure_cleans_up(
    _write_manifest(src, MEDIA_LINES), tmp_path / "data", monkeypatch, loader, video_frames=4
  )
