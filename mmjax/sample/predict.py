"""Answering prompts about image files (and sound files) with a trained model (the sample command and
notebooks)."""

from __future__ import annotations

import logging
import os
import wave

import numpy as np

from mmjax.data import config as data_config_lib, examples, manifest, wav
from mmjax.models import vlm
from mmjax.sample import embed


def load_image(path: str, image_size: int | None) -> np.ndarray:
  """An image file as the model saw training images: manifest.load_image (RGB, alpha composited on
  white, the training resize), so sampled pixels equal the dataset's for the same file. image_size
  None: the same at the file's own size (to draw on what the user gave)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--image {path}: no such file.")
  try:
    return manifest.load_image(path, image_size)
  except OSError as e:
    raise ValueError(f"--image {path}: not a readable image ({e}).") from e


def load_audio(path: str, data_config) -> tuple[np.ndarray, np.int32]:
  """A WAV file as the model hears a dataset clip: (int16 [N], valid samples).

  Read like a manifest's "audio" file (wav.read_wav: PCM of any width, channels averaged to mono,
  any sample rate resampled to data.audio_sample_rate), then cut or zero-padded to the
  data.max_audio_seconds window by the pipeline's own fit_clip. A longer file is cut, as the
  pipeline cuts dataset clips; that is logged, since the model then never hears the rest.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"--audio {path}: no such file.")
  rate = int(data_config.audio_sample_rate)
  try:
    clip = wav.read_wav(path, rate)
  except (wave.Error, EOFError, ValueError, OSError) as e:  # what the wave module raises on non-PCM data
    raise ValueError(f"--audio {path}: not a readable PCM WAV file ({e}).") from e
  if len(clip) == 0:
    raise ValueError(f"--audio {path}: the file has no samples.")
  window = data_config_lib.max_audio_samples(data_config)
  if len(clip) > window:
    logging.warning(
      "--audio %s is %.2f s long; the model hears its first %.2f s (config.data.max_audio_seconds), "
      "as it heard the dataset's clips.",
      path,
      len(clip) / rate,
      window / rate,
    )
  return examples.fit_clip(clip, window)


def check_audio_flag(config, audio_paths) -> None:
  """--audio is given exactly when the model has an audio encoder (config.model.audio); cheap (the
  config only), so the sample command checks it before loading the workdir."""
  hears = "audio" in vlm.media_modalities(config.model)
  if hears and not audio_paths:
    what = (
      " and its questions are spoken (config.data.spoken_prompt): give the question as a WAV file"
      if config.data.spoken_prompt
      else ": give the sound it hears as a WAV file"
    )
    raise ValueError(f"this model has an audio encoder (config.model.audio){what} with --audio=FILE.wav.")
  if audio_paths and not hears:
    raise ValueError(
      f"--audio={audio_paths[0]}: this model has no audio encoder (config.model.audio is off in its "
      "config), so it would not hear it; drop --audio."
    )


def encode_prompts(tokenizer, prompts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.zeros((len(prompts), max_len), np.int32)
  lengths = np.zeros((len(prompts),), np.int32)
  for i, p in enumerate(prompts):
    if not p or not p.strip():
      raise ValueError(f"prompt {i} is empty: ask a question, or 'describe the image.' for a caption.")
    ids = tokenizer.encode(p.strip())
    if len(ids) > max_len:
      raise ValueError(f"prompt {p!r} is {len(ids)} tokens; this model reads at most {max_len}.")
    tokens[i, : len(ids)] = ids
    lengths[i] = len(ids)
  return tokens, lengths


def answer(
  trained, generate_fn, image_paths: list[str], prompts: list[str], rng, audio_paths: list[str] = ()
) -> list[str]:
  """Generates one answer per (image, prompt[, audio]).

  audio_paths: one WAV file per image, for a model with an audio encoder (config.model.audio; see
  load_audio); they reach the model as the batch's audio / audio_len, like dataset clips.
  """
  c = trained.config
  check_audio_flag(c, audio_paths)
  unheard = [k for k in getattr(generate_fn, "media_keys", ()) if k not in vlm.MEDIA_INPUTS["audio"]]
  if unheard:
    raise ValueError(
      f"this model also reads {unheard} (config.model.video), which image and audio files do not "
      "give: sample dataset examples instead (--split)."
    )
  if audio_paths and len(audio_paths) != len(image_paths):
    raise ValueError(f"{len(image_paths)} images but {len(audio_paths)} audio files: give one per image.")
  batch = {"image": np.stack([load_image(p, c.data.image_size) for p in image_paths])}
  batch["prompt"], batch["prompt_len"] = encode_prompts(trained.data.tokenizer, prompts, c.data.max_prompt_len)
  if audio_paths:
    clips = [load_audio(p, c.data) for p in audio_paths]
    batch["audio"] = np.stack([clip for clip, _ in clips])
    batch["audio_len"] = np.stack([n for _, n in clips])
  out = generate_fn(
    trained.params, batch["image"], batch["prompt"], batch["prompt_len"], rng, **vlm.media_inputs(c.model, batch)
  )
  return [trained.data.tokenizer.decode(row.tolist()) for row in out]


def rank_texts(trained, image_paths: list[str], texts: list[str]) -> list[list[tuple[str, float]]]:
  """A contrastive model (config.model.kind="contrastive"): for every image, the texts sorted by
  cosine similarity of their embeddings, highest first, as (text, similarity) pairs."""
  c = trained.config
  images = np.stack([load_image(p, c.data.image_size) for p in image_paths])
  tokens, lengths = encode_prompts(trained.data.tokenizer, texts, c.data.max_target_len)
  n = max(len(images), len(texts))
  pad = lambda x: np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
  embed_fn = embed.make_embed_fn(trained.setup)
  img, txt = embed.embed_rows(
    embed_fn, trained.params, pad(images), pad(tokens), pad(lengths), embed.global_batch(n, embed_fn.multiple)
  )
  sims = img[: len(images)] @ txt[: len(texts)].T
  return [[(texts[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in sims]
