"""Audio and video in the model and the tasks built on them: media encoders in VisionLanguageModel
(shapes, padding, KV-cache decoding), the spoken-prompt and audio-visual matching data, the
config errors, and short end-to-end runs of experiments/configs/speech_vqa.py and av_matching.py."""

import collections
import os
import shutil
import subprocess
import sys
import wave

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from mmjax import config_files
from mmjax.data import av_matching, pipeline, prepare, schema
from mmjax.data.examples import SPOKEN_PROMPT, TASK_AV_MATCH, TASK_VQA
from mmjax.models import build_model, vlm
from mmjax.models.vlm import check_fusion_media
from mmjax.sample import predict
from mmjax.train import batches as batches_lib, trainer
from mmjax.train.metrics_writer import read_metrics
from tests.conftest import CONFIGS, ROOT
from tests.test_fusion import FAMILIES, decode_step_by_step, model_config, open_gates
from tests.test_model import V, inputs, rel_err
from tests.test_train import independent_scores, report_rows

needs_espeak = pytest.mark.skipif(
  shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)"
)

N_AUDIO, T_VIDEO = 1024, 4  # samples (8 kHz) and frames (16 x 16) of the model tests
AUDIO = dict(
  width=32, depth=1, num_heads=2, mlp_dim=64, frontend="logmel", sample_rate=8000, n_fft=128, hop=32, n_mels=16
)
VIDEO = dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8, tubelet_t=2)


def media_model_config(family="flamingo", audio=True, video=False, mask_padding=True):
  c = model_config(
    FAMILIES[family]
    if family in FAMILIES
    else dict(name="cross_attention", cross_attention_every=1, fuse_depth=1, num_heads=2, mlp_dim=64)
  )
  if audio:
    c.audio = ml_collections.ConfigDict(dict(AUDIO, mask_padding=mask_padding))
  if video:
    c.video = ml_collections.ConfigDict(dict(VIDEO, mask_padding=mask_padding))
  return c


def media_inputs(rng, b=3, audio=True, video=False):
  out = {}
  if audio:
    out["audio"] = (rng.normal(size=(b, N_AUDIO)) * 8000).astype(np.int16)
    out["audio_len"] = np.array([N_AUDIO, 500, 700][:b], np.int32)
  if video:
    out["video"] = rng.integers(0, 256, (b, T_VIDEO, 16, 16, 3)).astype(np.uint8)
    out["video_len"] = np.array([T_VIDEO, 2, 2][:b], np.int32)
  return out


def _init(model, images, prompt, plen, target, **media):
  return open_gates(
    nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), images, prompt, plen, target, **media)["params"])
  )


# ------------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("audio,video", [(True, False), (True, True)])
def test_media_change_logits_and_padding_does_not(audio, video):
  rng = np.random.default_rng(0)
  images, prompt, plen, target = inputs(rng)
  media = media_inputs(rng, audio=audio, video=video)
  model = build_model(media_model_config(audio=audio, video=video), V)
  params = _init(model, images, prompt, plen, target, **media)
  assert ("audio_encoder" in params) == audio and ("video_encoder" in params) == video
  apply = jax.jit(lambda **m: model.apply({"params": params}, images, prompt, plen, target, **m))
  logits = apply(**media)
  assert logits.shape == (3, target.shape[1], V) and np.all(np.isfinite(np.asarray(logits)))

  for key, length, row in (("audio", "audio_len", 1), ("video", "video_len", 2)):
    if key not in media:
      continue
    n = int(media[length][row])
    # Whatever the padding past the valid length holds, the logits stay the same ...
    padded = dict(media, **{key: media[key].copy()})
    padded[key][row, n:] = rng.integers(0, 127, padded[key][row, n:].shape).astype(media[key].dtype)
    np.testing.assert_allclose(apply(**padded), logits, rtol=1e-5, atol=1e-5)
    # ... while changing the valid part changes that row's logits (and only that row's).
    changed = dict(media, **{key: media[key].copy()})
    changed[key][row, :n] = changed[key][row, :n] // 2 + 3
    out = np.asarray(apply(**changed))
    assert rel_err(out[row], logits[row]) > 1e-4, key
    np.testing.assert_allclose(np.delete(out, row, 0), np.delete(np.asarray(logits), row, 0), rtol=1e-5, atol=1e-5)

  # Nor does the amount of padding: the same clips cut to a shorter window give the same logits
  # (padded tokens are masked in the encoder and the fusion, not just zero). The window keeps
  # n_fft / 2 samples after the longest clip: the centred STFT reflects the window's end.
  short = {"audio": 700 + AUDIO["n_fft"] // 2, "video": 2}
  lens = dict(audio_len=np.array([600, 500, 700], np.int32), video_len=np.full(3, 2, np.int32))
  same = {k: v for k, v in dict(media, **lens).items() if k in media}
  cut = {k: v[:, : short[k]] if k in short else v for k, v in same.items()}
  np.testing.assert_allclose(apply(**cut), apply(**same), rtol=1e-5, atol=1e-5)

  # Valid audio tokens come from audio_len through the subsampling: hop 32 -> frames, then two
  # stride-2 convs (padding 1); 1024 samples -> 33 frames -> 17 -> 9 tokens.
  tokens, n = model.bind({"params": params})._audio_tokens(media["audio"], media["audio_len"])
  half = lambda x: (x - 1) // 2 + 1
  assert tokens.shape == (3, 9, 32)
  np.testing.assert_array_equal(n, half(half(media["audio_len"] // 32 + 1)))
  assert int(n[0]) == 9 and 0 < int(n[1]) < int(n[2]) < 9


@pytest.mark.parametrize("family,mask_padding", [("flamingo", True), ("cross_attention", False)])
def test_kv_cache_decoding_with_audio_equals_full_forward(family, mask_padding):
  rng = np.random.default_rng(2)
  images, prompt, plen, target = inputs(rng, lt=5)
  media = media_inputs(rng, video=True)
  model = build_model(media_model_config(family, video=True, mask_padding=mask_padding), V)
  params = _init(model, images, prompt, plen, target, **media)
  full = jax.jit(model.apply)({"params": params}, images, prompt, plen, target, **media)
  cond = model.apply({"params": params}, images, prompt, plen, method="encode", **media)
  # The audio reaches the decoder through its cross-attention memory: other clips change the memory. In
  # flamingo's (4 latents per modality, in name order: audio, image, video) only the audio's latents.
  # (Not -audio: a log-mel spectrogram does not see the sign.)
  other = model.apply(
    {"params": params}, images, prompt, plen, method="encode", **dict(media, audio=media["audio"] // 2 + 3)
  )
  change = np.abs(np.asarray(other.memory) - np.asarray(cond.memory)).max(axis=(0, 2))
  assert (change > 1e-3).any() and (family != "flamingo" or ((change[:4] > 1e-3).all() and not change[4:].any()))
  assert rel_err(decode_step_by_step(model, params, images, prompt, plen, target, **media), full) < 1e-5


def test_model_media_errors():
  rng = np.random.default_rng(3)
  images, prompt, plen, target = inputs(rng)
  media = media_inputs(rng)
  with pytest.raises(
    ValueError, match=r"config.model.audio.mask_padding=True.*config.model.fusion.name='cross_attention'"
  ):
    build_model(media_model_config("cross_attention"), V).init(jax.random.key(0), images, prompt, plen, target, **media)
  # qformer masks padding of the last modality in name order only: video is, audio (before "image") is not.
  check_fusion_media(media_model_config("qformer_memory", audio=False, video=True))
  with pytest.raises(ValueError, match="config.model.audio.mask_padding"):
    build_model(media_model_config("qformer_memory"), V).init(jax.random.key(0), images, prompt, plen, target, **media)
  model = build_model(media_model_config(), V)
  with pytest.raises(ValueError, match=r"encoder for audio \(config.model.audio\) but no audio"):
    model.init(jax.random.key(0), images, prompt, plen, target)
  with pytest.raises(ValueError, match=r"audio was given but .*config.model.audio is off"):
    build_model(media_model_config(audio=False), V).init(jax.random.key(0), images, prompt, plen, target, **media)


# ------------------------------------------------------------------------------------------------
# Data: spoken prompt and audio-visual matching


def test_pair_sounds_balanced_deterministic_and_really_mismatched():
  keys = [("s", i % 7) for i in range(40)] + [None, None]  # repeated sounds, two records without one
  a = av_matching.pair_sounds(keys, 0.5, [0, 1])
  np.testing.assert_array_equal(a, av_matching.pair_sounds(keys, 0.5, [0, 1]))
  assert not np.array_equal(a, av_matching.pair_sounds(keys, 0.5, [1, 1]))
  assert list(a[-2:]) == [-1, -1]
  own = a[:40] == np.arange(40)
  assert own.sum() == 20  # exactly half mismatched
  for i in np.flatnonzero(~own):
    assert keys[a[i]] is not None and keys[a[i]] != keys[i]
  assert (av_matching.pair_sounds(keys, 0.0, 0)[:40] == np.arange(40)).all()
  assert (av_matching.pair_sounds(keys, 1.0, 0)[:40] != np.arange(40)).all()
  with pytest.raises(ValueError, match="same sound"):
    av_matching.pair_sounds([("x",)] * 4, 0.5, 0)
  with pytest.raises(ValueError, match="av_mismatch_fraction"):
    av_matching.pair_sounds(keys, 1.5, 0)


def _task_config(name, data_dir, **data):
  """experiments/configs/<name>.py shrunk to seconds: a few 32-px scenes, batch 8 (divisible by 8 simulated devices)."""
  c = config_files.load(os.path.join(CONFIGS, f"{name}.py"))
  data = dict(dict(data_dir=data_dir, image_size=32, train_scenes=6, validation_scenes=2, test_scenes=4), **data)
  c.data.shapes.update({k: v for k, v in data.items() if k in c.data.shapes})  # the shapes project's block
  c.data.update({k: v for k, v in data.items() if k not in c.data.shapes})
  c.update(
    dict(
      total_steps=2,
      batch_size=8,
      eval_batch_size=8,
      eval_every=1,
      checkpoint_every=2,
      log_every=1,
      eval_max_examples=4,
      sample_examples=2,
    )
  )
  return c


def test_av_matching_examples(shared_data_dir):
  c = _task_config("av_matching", shared_data_dir, test_scenes=20)
  data = pipeline.Data(c)
  split = data.split("test")
  assert (split.task == TASK_AV_MATCH).all() and len(split) == 20  # one per scene, nothing else
  answers = collections.Counter(split.references(i) for i in range(len(split)))
  assert answers == {"yes": 10, "no": 10}
  sounds = data.builder.as_data_source("test")
  for i in range(len(split)):
    ex = split.example(i)
    assert data.tokenizer.decode(ex["prompt"][: ex["prompt_len"]].tolist()) == av_matching.PROMPT
    ri = int(split.index[i][0])
    own = sounds[ri]["scene_audio"]
    heard = ex["audio"][: ex["audio_len"]]
    assert np.array_equal(heard, own) == (split.references(i) == "yes")
    if split.references(i) == "no":  # another scene's sound, and a different one
      assert any(np.array_equal(heard, sounds[j]["scene_audio"]) for j in range(len(sounds)) if j != ri)
  # Deterministic: a fresh load pairs the same way (other seeds: test_pair_sounds_...).
  np.testing.assert_array_equal(
    prepare.load_split(c, "test", data.tokenizer, data.builder).av_partner, split.av_partner
  )


@needs_espeak
def test_spoken_prompt_removes_the_question_text(shared_data_dir):
  c = _task_config("speech_vqa", shared_data_dir)
  data = pipeline.Data(c)
  split = data.split("train")
  src = data.builder.as_data_source("train")
  assert (split.task == TASK_VQA).all()
  assert len({q for r in split.records for q in r["questions"]}) > 10
  for i in range(0, len(split), 5):
    ex = split.example(i)
    # Every VQA example reads the same fixed prompt, whatever its question ...
    assert data.tokenizer.decode(ex["prompt"][: ex["prompt_len"]].tolist()) == SPOKEN_PROMPT
    assert split.prompt_text(i) == SPOKEN_PROMPT
    # ... and hears its question.
    ri, j = split.index[i]
    np.testing.assert_array_equal(ex["audio"][: ex["audio_len"]], schema.unpack_clips(src[int(ri)])[j])
  # Off: the same dataset gives the question as the prompt.
  c.data.spoken_prompt = False
  plain = prepare.load_split(c, "train", data.tokenizer, data.builder)
  assert plain.prompt_text(0) == split.records[0]["questions"][0]


def test_data_task_and_media_errors(tiny_config, tmp_path):
  # A model with an audio encoder on a dataset without audio: fails before building anything.
  tiny_config.model.audio = ml_collections.ConfigDict(AUDIO)
  tiny_config.data.data_dir = str(tmp_path / "never_built")
  with pytest.raises(ValueError, match=r"config.model.audio .*spoken_questions=True .*own sound"):
    trainer.train_and_evaluate(tiny_config, str(tmp_path / "run"), progress=False)
  assert not os.path.exists(tmp_path / "never_built")
  tiny_config.data.shapes.object_sounds = True
  with pytest.raises(ValueError, match=r"config.model.audio.sample_rate=8000 but config.data.audio_sample_rate=16000"):
    batches_lib.check_data_media(tiny_config, prepare.dataset_media(tiny_config))
  tiny_config.model.video = ml_collections.ConfigDict(VIDEO)
  with pytest.raises(ValueError, match=r"config.data.video_frames=N"):
    batches_lib.dummy_batch(tiny_config, 1)


def test_task_options_need_their_audio(shared_data_dir):
  c = _task_config("av_matching", shared_data_dir, object_sounds=False, spoken_prompt=True)
  builder = prepare.prepare_builder(c)  # plain shapes: no audio at all
  with pytest.raises(ValueError, match=r"spoken_prompt=True .*set config.data.spoken_questions=True"):
    prepare.load_split(c, "test", builder=builder)
  c.data.spoken_prompt = False
  with pytest.raises(ValueError, match=r"av_matching=True .*per-record sound"):
    prepare.load_split(c, "test", builder=builder)


def test_batch_keys_follow_the_model(tiny_config):
  assert batches_lib.batch_keys(tiny_config) == vlm.BATCH_KEYS
  tiny_config.model.audio = ml_collections.ConfigDict(dict(AUDIO, sample_rate=16000))
  tiny_config.model.video = ml_collections.ConfigDict()  # empty section = off
  tiny_config.data.max_audio_seconds = 0.5
  assert batches_lib.batch_keys(tiny_config) == vlm.BATCH_KEYS + ("audio", "audio_len")
  batch = batches_lib.dummy_batch(tiny_config, 2)
  assert batch["audio"].shape == (2, 8000) and batch["audio"].dtype == np.int16


# ------------------------------------------------------------------------------------------------
# End to end


def _train(c, workdir):
  c.sample_examples = 1000  # the sample report holds every test prediction
  final = trainer.train_and_evaluate(c, workdir, progress=False)
  # The test metrics against an independent scoring of the report's predictions of the whole test split.
  report = report_rows(os.path.join(workdir, "samples", "test_samples.txt"))
  assert sorted(r["example_id"] for r in report) == list(range(len(pipeline.Data(c).split("test"))))
  assert final == pytest.approx(independent_scores(report, "test"), rel=1e-6, abs=1e-12)
  rows = read_metrics(workdir)
  return final, {k for r in rows for k in r}


@pytest.mark.slow
@needs_espeak
def test_speech_vqa_trains_and_reports_vqa_accuracy(shared_data_dir, tmp_path):
  final, logged = _train(_task_config("speech_vqa", shared_data_dir), str(tmp_path / "run"))
  assert "test/cider" not in final  # the spoken questions only (_train checked the metrics' values)
  assert {"train/loss", "validation/vqa_accuracy", "test/vqa_accuracy", "test/vqa_accuracy_spatial"} <= logged


@pytest.fixture(scope="module")
def av_run(shared_data_dir, tmp_path_factory):
  """An av_matching workdir trained 2 steps: the speech_vqa audio model, on object sounds (no
  espeak-ng needed). -> (config, workdir, final metrics, metric keys logged)."""
  c = _task_config("av_matching", shared_data_dir, test_scenes=20)
  wd = str(tmp_path_factory.mktemp("av_matching") / "run")
  return (c, wd) + _train(c, wd)


@pytest.mark.slow
def test_av_matching_trains_and_reports_av_match_accuracy(av_run):
  _, _, final, logged = av_run
  assert "test/av_match_accuracy" in final and "test/vqa_accuracy" not in final  # values: checked in _train
  assert {"train/loss", "validation/av_match_accuracy", "test/av_match_accuracy"} <= logged


def _write_wav(path, channels: list, rate: int):
  """16-bit PCM WAV of int16 channels (interleaved)."""
  with wave.open(str(path), "wb") as w:
    w.setnchannels(len(channels))
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(np.stack(channels, axis=1).astype("<i2").tobytes())


def test_sample_audio_file_is_read_like_a_dataset_clip(shared_data_dir, tmp_path):
  """predict.load_audio: a file holding a dataset clip gives exactly that example's audio/audio_len;
  other channel counts and rates are mixed down and resampled; longer files are cut to the window."""
  c = _task_config("av_matching", shared_data_dir, test_scenes=20)
  split = pipeline.Data(c).split("test")
  ex = split.example(0)
  own = ex["audio"][: ex["audio_len"]]
  _write_wav(tmp_path / "own.wav", [own], c.data.audio_sample_rate)
  clip, n = predict.load_audio(str(tmp_path / "own.wav"), c.data)
  np.testing.assert_array_equal(clip, ex["audio"])
  assert n == ex["audio_len"] == len(ex["audio"]) == 16000  # 1 s object sounds fill the 1 s window
  _write_wav(tmp_path / "stereo.wav", [own[::2], own[::2]], c.data.audio_sample_rate // 2)  # 8 kHz, 2 channels
  clip, n = predict.load_audio(str(tmp_path / "stereo.wav"), c.data)
  assert clip.shape == (16000,) and clip.dtype == np.int16 and n == 16000
  short = np.zeros(4000, np.int16) + 1000
  _write_wav(tmp_path / "short.wav", [short], c.data.audio_sample_rate)
  clip, n = predict.load_audio(str(tmp_path / "short.wav"), c.data)
  assert n == 4000 and (clip[:4000] == 1000).all() and not clip[4000:].any()  # zero-padded, as the pipeline pads
  _write_wav(tmp_path / "long.wav", [np.tile(own, 3)], c.data.audio_sample_rate)
  clip, n = predict.load_audio(str(tmp_path / "long.wav"), c.data)
  np.testing.assert_array_equal(clip, own)
  assert n == 16000
  (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
  with pytest.raises(ValueError, match=r"--audio .*bad.wav: not a readable PCM WAV file"):
    predict.load_audio(str(tmp_path / "bad.wav"), c.data)
  with pytest.raises(FileNotFoundError, match=r"--audio .*missing.wav: no such file"):
    predict.load_audio(str(tmp_path / "missing.wav"), c.data)


def test_check_audio_flag():
  """--audio exactly when the model hears audio; the errors name the flag and config.model.audio."""
  load = lambda name: config_files.load(os.path.join(CONFIGS, f"{name}.py"))
  speech = load("speech_vqa")
  predict.check_audio_flag(speech, ["q.wav"])
  with pytest.raises(
    ValueError,
    match=r"audio encoder \(config.model.audio\) and its questions are spoken "
    r"\(config.data.spoken_prompt\): give the question as a WAV file with "
    r"--audio=FILE.wav",
  ):
    predict.check_audio_flag(speech, [])
  for name in ("tiny", "contrastive"):
    predict.check_audio_flag(load(name), [])
    with pytest.raises(ValueError, match=r"--audio=q.wav: this model has no audio encoder \(config.model.audio is off"):
      predict.check_audio_flag(load(name), ["q.wav"])


@pytest.mark.slow
def test_sample_command_with_audio(av_run, tiny_config, tmp_path):
  c, wd, _, _ = av_run
  ex = pipeline.Data(c).split("test").example(0)
  image, sound = tmp_path / "scene.png", tmp_path / "sound.wav"
  Image.fromarray(ex["image"]).save(image)
  # The scene's sound as a 44.1 kHz stereo file: mixed down and resampled to the model's 16 kHz.
  rate = 44100
  own = ex["audio"][: ex["audio_len"]].astype(np.float64)
  resampled = np.interp(np.arange(rate) * 16000 / rate, np.arange(len(own)), own).astype(np.int16)
  _write_wav(sound, [resampled, resampled], rate)
  run = lambda workdir, *args: subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "sample.py"), f"--workdir={workdir}", f"--image={image}", *args],
    capture_output=True,
    text=True,
    timeout=300,
  )
  out = run(wd, f"--audio={sound}", f"--prompt={av_matching.PROMPT}")
  assert out.returncode == 0, out.stderr[-2000:]
  # One answer line for one image (a 2-step model may answer with EOS only: an empty line).
  assert len(out.stdout.splitlines()) == 1, out.stdout

  # The model has an audio encoder but got no --audio: named flag and config key, no traceback.
  bad = run(wd, f"--prompt={av_matching.PROMPT}")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
  assert "config.model.audio" in bad.stderr and "--audio=FILE.wav" in bad.stderr
  # --audio for a model without an audio encoder (an image-only workdir): refused from its config.
  plain = tmp_path / "plain"
  plain.mkdir()
  (plain / "config.json").write_text(tiny_config.to_json_best_effort(indent=2))
  bad = run(plain, f"--audio={sound}", "--prompt=what shape is the red object?")
  assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
  assert f"--audio={sound}: this model has no audio encoder (config.model.audio is off" in bad.stderr
