# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Prototyping a fusion family
#
# A fusion module turns encoder outputs into a `Conditioning` (a decoder `prefix` and/or a
# cross-attention `memory`). Here we write a new one in a few lines, name it in a config, train it with the
# real trainer on the embedded shapes data, and compare its loss curve with built-in families.
# `MMJAX_NOTEBOOK_FAST=1` (CI) trains 2 steps per family; otherwise 300.

# %%
import os
import tempfile

import matplotlib
matplotlib.use("Agg")
import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections

from mmjax import config_files, layers
from mmjax.fusion import Conditioning, Fusion
from mmjax.train import trainer
from mmjax.train.metrics_writer import read_metrics

FAST = os.environ.get("MMJAX_NOTEBOOK_FAST", "0") == "1"
ROOT = os.path.abspath(os.getcwd())
while not os.path.exists(os.path.join(ROOT, "experiments", "configs")):
  ROOT = os.path.dirname(ROOT)

# %% [markdown]
# ## A new family: pooled-image prefix
#
# Image tokens are average-pooled into `pool` groups (a cheap, fixed-size summary), projected, and
# put in front of the answer together with the projected prompt tokens. The decoder handles the
# prefix-LM mask (bidirectional prefix, padded prompt slots masked) by itself.

# %% [markdown]
# A config names any family as `"module:Class"` (mmjax.registry); this notebook's own module is
# `__main__`, so the config below says `name="__main__:PooledPrefixFusion"`.

# %%
class PooledPrefixFusion(Fusion):
  cross_attention_every: int = 0
  gated: bool = False
  pool: int = 4
  implementation: str = "auto"
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, media, text=None):
    image, _ = media["image"]
    b, n, d = image.shape
    pooled = image.reshape(b, self.pool, n // self.pool, d).mean(2)
    parts = [layers.Dense(self.width, ("media_embed",), ("embed",), name="proj_image")(pooled)]
    length = jnp.full((b,), self.pool, jnp.int32)
    if text is not None:
      tokens, text_len = text
      parts.append(layers.Dense(self.width, ("media_embed",), ("embed",), name="proj_text")(tokens))
      length = length + text_len
    prefix = layers.constrain_tokens(jnp.concatenate(parts, axis=1))
    return Conditioning(prefix=prefix, prefix_len=length)

# %% [markdown]
# ## Train it and two built-in families

# %%
def run(config_name, fusion=None):
  c = config_files.load(os.path.join(ROOT, "experiments/configs", f"{config_name}.py"))
  if fusion is not None:
    c.model.fusion = ml_collections.ConfigDict(fusion)
    c.model.decoder.max_len = 64 + c.data.max_prompt_len + c.data.max_target_len
  c.total_steps = 2 if FAST else 300
  c.eval_every = c.total_steps
  c.checkpoint_every = c.total_steps
  c.log_every = 1 if FAST else 10
  c.eval_max_examples = 4 if FAST else 64
  c.eval_batch_size = 4 if FAST else c.eval_batch_size
  c.sampler.max_new_tokens = 8 if FAST else 0
  workdir = tempfile.mkdtemp(prefix=f"mmjax_{config_name}_")
  trainer.train_and_evaluate(c, workdir, progress=False)
  return read_metrics(workdir)


families = {"pooled_prefix (new)": ("tiny", dict(name="__main__:PooledPrefixFusion", pool=4)),
            "cross_attention": ("tiny", None)}
if not FAST:
  families["prefix_lm"] = ("fusion_prefix_lm", None)
  families["flamingo"] = ("fusion_flamingo", None)
curves = {name: run(cfg, fusion) for name, (cfg, fusion) in families.items()}

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, rows in curves.items():
  rows = [r for r in rows if "train/loss" in r]
  ax.plot([r["step"] for r in rows], [r["train/loss"] for r in rows], label=name, marker="o" if FAST else None)
ax.set_xlabel("step")
ax.set_ylabel("train loss")
ax.legend()
plt.show()
for name, rows in curves.items():
  test = [r for r in rows if "test/vqa_accuracy" in r]
  print(f"{name:22} final loss {[r for r in rows if 'train/loss' in r][-1]['train/loss']:.3f}  "
        f"test vqa accuracy {test[-1]['test/vqa_accuracy']:.3f}")
