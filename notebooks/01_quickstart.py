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
# # Quickstart: train, load, sample, look at attention
#
# Trains the `tiny` config with the real trainer into a temporary workdir, loads the run back,
# answers questions about test images, and draws where the decoder's cross-attention looks.
# `MMJAX_NOTEBOOK_FAST=1` (CI) trains for 2 steps; otherwise for 300.

# %%
import os
import tempfile

import matplotlib
matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mmjax import config_files
from mmjax.sample.generate import make_generate_fn, options_from_config
from mmjax.train import trainer, workdir as workdir_lib

FAST = os.environ.get("MMJAX_NOTEBOOK_FAST", "0") == "1"
ROOT = os.path.abspath(os.getcwd())
while not os.path.exists(os.path.join(ROOT, "experiments", "configs")):
  ROOT = os.path.dirname(ROOT)

# %% [markdown]
# ## Train

# %%
config = config_files.load(os.path.join(ROOT, "experiments/configs/tiny.py"))
config.total_steps = 2 if FAST else 300
config.eval_every = config.total_steps       # evaluate once, at the end
config.checkpoint_every = config.total_steps
config.log_every = 1 if FAST else 25
config.eval_max_examples = 8 if FAST else 64
config.sample_examples = 2
workdir = tempfile.mkdtemp(prefix="mmjax_quickstart_")
final = trainer.train_and_evaluate(config, workdir, progress=False)
print({k: round(float(v), 3) for k, v in final.items()})

# %% [markdown]
# ## Load the run back and answer questions

# %%
trained = workdir_lib.load(workdir)
tok = trained.data.tokenizer
generate_fn = make_generate_fn(trained.setup, options_from_config(trained.config, tok))
batch = next(trained.data.eval_batches("test", 4, max_examples=4))
answers = generate_fn(trained.params, batch["image"], batch["prompt"], batch["prompt_len"], jax.random.key(0))
for i in range(4):
  prompt = tok.decode(batch["prompt"][i, : batch["prompt_len"][i]].tolist())
  print(f"{prompt!r:60} -> {tok.decode(answers[i].tolist())!r}")

# %% [markdown]
# ## Cross-attention maps
#
# `capture_intermediates` records every module's output on a teacher-forced pass over the generated
# answers: the fusion's Conditioning (the memory the decoder reads) and, in the first decoder block,
# the normalised queries' input (`norm_cross`) and the cross-attention output. The attention weights
# are recomputed from the block's query/key kernels and checked against that output.

# %%
model, params = trained.setup.model, trained.params
target_in = np.concatenate([np.full((4, 1), tok.bos_id, np.int32), answers[:, :-1]], 1)
_, inter = model.apply({"params": params}, batch["image"], batch["prompt"], batch["prompt_len"], target_in,
                       capture_intermediates=True, mutable=["intermediates"])
inter = inter["intermediates"]
cond = inter["fusion"]["__call__"][0]
block = inter["decoder"]["blocks_0"]
x = block["norm_cross"]["__call__"][0]                  # [B, T, D] cross-attention input
p = params["decoder"]["blocks_0"]["cross_attention"]
q = jnp.einsum("btd,dhk->bthk", x, p["query"]["kernel"])
k = jnp.einsum("bmd,dhk->bmhk", cond.memory, p["key"]["kernel"])
v = jnp.einsum("bmd,dhk->bmhk", cond.memory, p["value"]["kernel"])
heads = q.shape[2]
k, v = jnp.repeat(k, heads // k.shape[2], 2), jnp.repeat(v, heads // v.shape[2], 2)
logits = jnp.einsum("bthk,bmhk->bhtm", q, k) / np.sqrt(q.shape[-1])
valid = jnp.arange(cond.memory.shape[1])[None, None, None] < cond.memory_len[:, None, None, None]
probs = jax.nn.softmax(jnp.where(valid, logits, -jnp.inf), axis=-1)
out = jnp.einsum("bhtm,bmhk,hkd->btd", probs, v, p["out"]["kernel"])
np.testing.assert_allclose(out, block["cross_attention"]["__call__"][0], rtol=2e-3, atol=2e-4)
print("recomputed cross-attention matches the model's output")

# %%
s = trained.config.data.image_size
n_img = (s // trained.config.model.vit.patch_size) ** 2
grid = int(np.sqrt(n_img))
fig, axes = plt.subplots(2, 4, figsize=(12, 6))
for i in range(4):
  n_tok = max(1, int(np.argmax(answers[i] == tok.eos_id)) or answers.shape[1])
  att = np.asarray(probs[i, :, :n_tok, :n_img].mean((0, 1)))   # heads and answer tokens
  axes[0, i].imshow(batch["image"][i])
  axes[0, i].set_title(tok.decode(answers[i].tolist())[:28], fontsize=8)
  axes[1, i].imshow(batch["image"][i])
  axes[1, i].imshow(np.kron(att.reshape(grid, grid), np.ones((s // grid, s // grid))), alpha=0.6, cmap="magma")
  on_image = float(probs[i, :, :n_tok, :n_img].sum() / probs[i, :, :n_tok].sum())
  axes[1, i].set_title(f"share of attention on the image: {on_image:.2f}", fontsize=8)
  for ax in axes[:, i]:
    ax.axis("off")
plt.tight_layout()
plt.show()
