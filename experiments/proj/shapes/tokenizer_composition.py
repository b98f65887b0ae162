r"""Do an image tokenizer's codes compose? A study of the text-to-image main job's test split.

  python experiments/proj/shapes/tokenizer_composition.py --quantizer=vq --steps=1500 \
      --config.data.shapes.t2i.max_objects=2
  python experiments/proj/shapes/tokenizer_composition.py --quantizer=fsq --steps=1500 \
      --config.data.shapes.t2i.max_objects=2

Fits an image tokenizer alone (no decoder LM) on the training images of the text-to-image data of
--config (default: the VQ family's experiments/configs/t2i_tokens.py; with max_objects=2 its scenes
are the main job's), then encodes and decodes the test split's
images and scores the round trip with the shapes parser, apart for the prompts that name a held-out
(colour, shape) pair (images with an object that no training image shows) and for the rest. A code
that stands for a fragment of one colour *and* shape has no entry for a held-out pair's fragments,
so the two groups' scores say how far the codes compose.

The tokenizer is mmjax.encoders.vq.VQTokenizer with config.model.image_tokenizer and --quantizer:
"vq" its nearest-entry lookup, "fsq" finite scalar quantization (Mentzer et al. 2023; levels
--fsq_levels): every combination of per-dimension levels is a code whether or not it was seen. Same
encoder, decoder, optimizer (Adam 1e-3, 200 warm-up steps, cosine) and batches. Prints one line per
group: count, PSNR, the parser's accuracies.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from ml_collections import config_flags

from mmjax import cli
from mmjax.data import pipeline
from mmjax.data.examples import TASK_CAPTION
from mmjax.encoders import vq
from mmjax.evaluate.contrastive import caption_text
from mmjax.models.text_to_image import to_model_space, to_pixels
from mmjax.projects.shapes import t2i

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")
FLAGS = flags.FLAGS


def define_flags():
  """The script's flags, defined when it runs (not at import)."""
  config_flags.DEFINE_config_file(
    "config", os.path.join(_CONFIGS, "t2i_tokens.py"), "The t2i_tokens config (data, tokenizer)."
  )
  flags.DEFINE_enum("quantizer", "vq", ["vq", "fsq"], "Nearest-entry VQ or finite scalar quantization.")
  flags.DEFINE_integer("steps", 1500, "Tokenizer training steps.")
  flags.DEFINE_integer("batch_size", 64, "Images per step.")
  flags.DEFINE_list("fsq_levels", ["8", "5", "5", "5"], "FSQ levels per code dimension (their product: the codes).")


def main(argv):
  del argv
  config = FLAGS.config
  data = pipeline.Data(config)
  fields = dict(config.model.image_tokenizer, recon_every=1, quantizer=FLAGS.quantizer)
  if FLAGS.quantizer == "fsq":
    levels = tuple(int(v) for v in FLAGS.fsq_levels)
    fields.update(fsq_levels=levels, codebook_size=math.prod(levels))
  model = vq.VQTokenizer(**fields)
  rng = np.random.default_rng(int(config.seed))
  train_ids = np.flatnonzero(data.split("train").task == TASK_CAPTION)

  def batch():
    return np.stack([data.image("train", int(i)) for i in rng.choice(train_ids, FLAGS.batch_size)])

  params = model.init(jax.random.key(int(config.seed)), to_model_space(batch()))["params"]
  steps = FLAGS.steps
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adam(optax.warmup_cosine_decay_schedule(0.0, 1e-3, min(200, steps // 2), steps, 2e-5), b2=0.98),
  )
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, images):
    def loss(p):
      losses = model.apply({"params": p}, to_model_space(images))[2]
      return jnp.mean(losses["recon_mse"] + losses["codebook"] + losses["commitment"])

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, value

  start = time.time()
  for i in range(steps):
    params, opt, value = step(params, opt, batch())
    if i % 250 == 0 or i == steps - 1:
      print(f"step {i}: loss {float(value):.6f} ({time.time() - start:.0f} s)", flush=True)

  split = data.split("test")
  ids = np.flatnonzero(split.task == TASK_CAPTION)
  prompts = [caption_text(split, int(i)) for i in ids]
  images = np.stack([data.image("test", int(i)) for i in ids])
  grid = vq.grid_shape(images.shape[1:3], model.patch_size)
  codes = jax.jit(lambda p, x: model.apply({"params": p}, to_model_space(x), method="encode"))(params, images)
  decode = jax.jit(lambda p, c: to_pixels(model.apply({"params": p}, c, grid, method="decode")))
  out = np.asarray(decode(params, codes))
  cfg = data.builder.builder_config
  held = t2i.held_out_combinations(
    cfg.seed, cfg.num_shapes, cfg.t2i_relations, cfg.t2i_held_out_pairs, cfg.t2i_held_out_relations
  )
  groups = {"held-out pair": [], "other": []}
  for i, prompt in enumerate(prompts):
    pair = any(held.pair_held_out(o) for o in t2i.parse_prompt(prompt).objects)
    groups["held-out pair" if pair else "other"].append(i)
  print(f"{FLAGS.quantizer}, {steps} steps: {len(np.unique(np.asarray(codes)))} codes used on the test split")
  for name, rows in groups.items():
    if not rows:
      continue
    mse = np.mean(np.square(out[rows].astype(np.float64) - images[rows].astype(np.float64)))
    scores = data.source.image_scorer(cfg, [prompts[r] for r in rows], out[rows])
    text = ", ".join(f"{k} {v:.3f}" for k, v in sorted(scores.items()))
    print(f"{name}: {len(rows)} prompts, PSNR {10 * np.log10(255.0**2 / max(mse, 1e-12)):.1f} dB, {text}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
