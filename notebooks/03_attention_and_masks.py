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
# # Attention masks as descriptions
#
# Every attention in mmjax takes a `MaskSpec` (causal / causal offset / prefix length / segment ids
# / valid key length), never a dense matrix. Here we build the masks the multimodal families use,
# draw them with the tile map kernels use to skip work (empty / partial / full blocks), and check
# every attention implementation available on this machine against the XLA reference.

# %%
import os

import matplotlib
matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from mmjax.attention import IMPLEMENTATIONS, MaskSpec, UnsupportedAttention, attention, tile_map
from mmjax.decoders.lm import prefix_segment_ids
from mmjax.fusion.flamingo import most_recent_image_mask

FAST = os.environ.get("MMJAX_NOTEBOOK_FAST", "0") == "1"
S = 64 if FAST else 256
BLOCK = 16 if FAST else 64

# %% [markdown]
# ## Masks of the fusion families
#
# * prefix-LM (PaliGemma): a prefix of 24 slots (image + prompt) of which 20 are valid, then the
#   answer: the valid prefix is bidirectional, the answer causal, padded prefix slots invisible.
# * Flamingo: text tokens attend only to the latents of the most recent image.
# * packed sequences: causal within each of three packed examples.
# * cross-attention memory with padding (`kv_valid_len`).

# %%
P = S * 3 // 8
seg = prefix_segment_ids(jnp.arange(S), jnp.array([P - 4]), P)
marker = np.zeros((1, S), bool)
marker[0, [2, S // 3, 2 * S // 3]] = True
packed = np.repeat(np.arange(3), [S // 2, S // 4, S - S // 2 - S // 4])[None]
masks = {
    "prefix-LM (padded prefix)": (MaskSpec(causal=True, prefix_len=jnp.array([P - 4]), q_segment_ids=seg,
                                           kv_segment_ids=seg), S, S),
    "Flamingo most recent image": (most_recent_image_mask(marker, 3, S // 6), S, 3 * (S // 6)),
    "packed, causal": (MaskSpec(causal=True, q_segment_ids=jnp.asarray(packed), kv_segment_ids=jnp.asarray(packed)),
                       S, S),
    "memory padding": (MaskSpec(kv_valid_len=jnp.array([S * 5 // 8])), S, S),
}
fig, axes = plt.subplots(2, len(masks), figsize=(4 * len(masks), 8))
for i, (name, (spec, sq, skv)) in enumerate(masks.items()):
  axes[0, i].imshow(np.asarray(spec.dense(1, sq, skv)[0]), cmap="gray_r", interpolation="nearest")
  axes[0, i].set_title(name, fontsize=9)
  tiles = np.asarray(tile_map(spec, 1, sq, skv, BLOCK, BLOCK)[0])
  axes[1, i].imshow(tiles, cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
  axes[1, i].set_title("tiles: 0 empty / 1 partial / 2 full", fontsize=9)
  # The tile map is conservative: EMPTY tiles hold no allowed pair, FULL tiles only allowed pairs.
  dense = np.asarray(spec.dense(1, sq, skv)[0])
  for a in range(tiles.shape[0]):
    for b in range(tiles.shape[1]):
      block = dense[a * BLOCK:(a + 1) * BLOCK, b * BLOCK:(b + 1) * BLOCK]
      assert tiles[a, b] != 0 or not block.any()
      assert tiles[a, b] != 2 or block.all()
  print(f"{name:28} tiles empty/partial/full = {[(tiles == t).sum() for t in range(3)]}")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Every implementation against the reference
#
# Implementations that cannot serve a request here (GPU or TPU kernels on a CPU, masks a kernel
# cannot express) raise `UnsupportedAttention` with the reason; we print it.

# %%
rng = np.random.default_rng(0)
results = []
for name, (spec, sq, skv) in masks.items():
  q = jnp.asarray(rng.normal(size=(1, sq, 4, 32)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, skv, 2, 32)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(1, skv, 2, 32)), jnp.float32)
  ref = attention(q, k, v, mask=spec, implementation="xla")
  for impl in sorted(IMPLEMENTATIONS):
    try:
      out = attention(q, k, v, mask=spec, implementation=impl)
    except UnsupportedAttention as e:
      print(f"{name:28} {impl:12} skipped: {str(e)[:70]}")
      continue
    err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    results.append((name, impl, err))
    print(f"{name:28} {impl:12} relative error {err:.2e}")
assert all(err < 1e-4 for _, _, err in results), results
assert any(impl != "xla" for _, impl, _ in results)
