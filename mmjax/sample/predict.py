"""Answering prompts about image files with a trained model (the sample command and notebooks)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def load_image(path: str, image_size: int) -> np.ndarray:
  """Any PIL-readable image -> uint8 [S, S, 3]: RGB (alpha composited on white), bicubic resize."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"--image {path}: no such file.")
  try:
    with Image.open(path) as im:
      im.load()
      if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.new("RGB", rgba.size, "white")
        im.paste(rgba, mask=rgba.split()[-1])
      im = im.convert("RGB")
      if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.BICUBIC)
      return np.asarray(im, np.uint8)
  except OSError as e:
    raise ValueError(f"--image {path}: not a readable image ({e}).") from e


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


def answer(trained, generate_fn, image_paths: list[str], prompts: list[str], rng) -> list[str]:
  """Generates one answer per (image, prompt)."""
  if getattr(generate_fn, "media_keys", ()):
    raise ValueError(f"this model also reads {list(generate_fn.media_keys)} (config.model.audio / video), which "
                     "an image and a prompt do not give: sample dataset examples instead (--split).")
  c = trained.config
  images = np.stack([load_image(p, c.data.image_size) for p in image_paths])
  tokens, lengths = encode_prompts(trained.data.tokenizer, prompts, c.data.max_prompt_len)
  out = generate_fn(trained.params, images, tokens, lengths, rng)
  return [trained.data.tokenizer.decode(row.tolist()) for row in out]


def rank_texts(trained, image_paths: list[str], texts: list[str]) -> list[list[tuple[str, float]]]:
  """A contrastive model (config.model.kind="contrastive"): for every image, the texts sorted by
  cosine similarity of their embeddings, highest first, as (text, similarity) pairs."""
  from mmjax.evaluate import contrastive
  c = trained.config
  images = np.stack([load_image(p, c.data.image_size) for p in image_paths])
  tokens, lengths = encode_prompts(trained.data.tokenizer, texts, c.data.max_target_len)
  n = max(len(images), len(texts))
  pad = lambda x: np.concatenate([x, np.zeros((n - len(x),) + x.shape[1:], x.dtype)])
  embed_fn = contrastive.make_embed_fn(trained.setup)
  img, txt = contrastive.embed_rows(embed_fn, trained.params, pad(images), pad(tokens), pad(lengths),
                                    contrastive.global_batch(n, embed_fn.multiple))
  sims = img[: len(images)] @ txt[: len(texts)].T
  return [[(texts[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in sims]
