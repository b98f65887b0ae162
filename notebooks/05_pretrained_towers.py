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
# # Composing pretrained towers
#
# A SigLIP image tower and a Gemma decoder, both Hugging Face checkpoints on local disk, joined
# PaliGemma-style by `experiments/configs/pretrained.py:prefix_lm` (image tokens and the prompt form
# the decoder's bidirectional prefix), fine-tuned with LoRA on a small captioning manifest through the
# real trainer, and the fine-tuned decoder exported back to the Hugging Face layout.
#
# No model hub is reachable here, so the notebook first builds *tiny random* SigLIP and Gemma
# checkpoints (and a small tokenizer) with `transformers` itself and saves them with
# `save_pretrained`: the directories look exactly like downloaded ones (`config.json`,
# `model.safetensors`, `tokenizer.json`, ...). With real checkpoints, point the paths below at
# your downloads and skip that cell. `MMJAX_NOTEBOOK_FAST=1` (CI) fine-tunes for 12 steps;
# otherwise for 200 (under a minute on a laptop CPU), enough to caption every colour correctly.

# %%
import json
import os
import tempfile

import matplotlib
matplotlib.use("Agg")
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import tokenizers
import torch
import transformers
from PIL import Image

from mmjax import config_files, pretrained
from mmjax.decoders.lm import Decoder
from mmjax.fusion.base import Conditioning
from mmjax.models import lora
from mmjax.sample.generate import make_generate_fn, options_from_config
from mmjax.train import trainer, workdir as workdir_lib
from mmjax.train.metrics_writer import read_metrics

FAST = os.environ.get("MMJAX_NOTEBOOK_FAST", "0") == "1"
ROOT = os.path.abspath(os.getcwd())
while not os.path.exists(os.path.join(ROOT, "experiments", "configs")):
  ROOT = os.path.dirname(ROOT)
work = tempfile.mkdtemp(prefix="mmjax_pretrained_towers_")
SIGLIP, GEMMA = os.path.join(work, "siglip"), os.path.join(work, "gemma")
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()

# %% [markdown]
# ## Stand-in checkpoints
#
# A SigLIP (32x32 images, 8x8 patches, 2 vision layers) and a Gemma (2 layers, grouped-query
# attention with one key/value head) with random weights, and a byte-level BPE tokenizer trained on
# the captions below, saved as `transformers` saves a downloaded model. A trained LM's (tied) token
# embeddings are far larger than a fresh initialisation's (std 0.02); a frozen decoder with those
# could barely move its logits whatever its adapters learn, so they are scaled up to look trained.

# %%
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (250, 250, 250)}
CAPTIONS = {name: f"a plain {name} picture" for name in COLOURS}

torch.manual_seed(0)
siglip = transformers.SiglipModel(transformers.SiglipConfig(
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8),
    text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=50, bos_token_id=1, eos_token_id=2, pad_token_id=0))).eval()
siglip.save_pretrained(SIGLIP)

bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
bpe.decoder = tokenizers.decoders.ByteLevel()
bpe.train_from_iterator(list(CAPTIONS.values()) * 4 + ["describe the image."],
                        tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"]))
hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<bos>",
                                              eos_token="<eos>")
hf_tok.save_pretrained(GEMMA)

gemma = transformers.GemmaForCausalLM(transformers.GemmaConfig(
    vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, head_dim=16, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
    eos_token_id=2)).eval()
with torch.no_grad():
  gemma.model.embed_tokens.weight.mul_(20.0)
gemma.save_pretrained(GEMMA)
for path in (SIGLIP, GEMMA):
  print(os.path.basename(path), sorted(os.listdir(path)))

# %% [markdown]
# ## What mmjax reads in a checkpoint
#
# `pretrained.parts(path)` names the mmjax modules a checkpoint holds (its family comes from
# `config.json`'s `model_type`), each with the constructor fields of that module. SigLIP holds an
# image tower, a text tower and the whole contrastive model; Gemma a decoder.

# %%
for path in (SIGLIP, GEMMA):
  found = pretrained.parts(path)
  print(f"{os.path.basename(path)} ({pretrained.hf_config(path)['model_type']}): parts {sorted(found)}")
  for name, part in found.items():
    keys = ("width", "depth", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "patch_size", "vocab_size")
    print(f"  {name:14} module={part.module!r:11}", {k: part.fields[k] for k in keys if k in part.fields},
          f"data={part.data}" if part.data else "")

# %% [markdown]
# ## The decoder in mmjax vs transformers
#
# `pretrained.load(path, "decoder")` converts the checkpoint's tensors into mmjax's parameter tree;
# the part's fields build the matching `Decoder` (RMSNorm with Gemma's +1 offset, rotary positions,
# scaled and tied embeddings). On random tokens its logits match transformers' to float32 round-off.

# %%
fields = pretrained.part(GEMMA, "decoder").fields
source_params = pretrained.load(GEMMA, "decoder")
tokens = np.random.default_rng(0).integers(3, fields["vocab_size"], (2, 9))
ours = np.asarray(Decoder(**fields).apply({"params": source_params}, jnp.asarray(tokens), Conditioning()))
with torch.no_grad():
  theirs = gemma(torch.as_tensor(tokens)).logits.numpy()
print(f"logits {ours.shape}, relative error vs transformers: "
      f"{np.linalg.norm(ours - theirs) / np.linalg.norm(theirs):.2e}")

# %% [markdown]
# ## Compose and fine-tune
#
# A manifest of solid-colour images with captions, one line per image
# (`{"image": "0.png", "caption": "a plain red picture", "split": "train"}`): 20 to train on, one test
# image per colour. The config names the two checkpoint directories in
# `config.model.init_from_pretrained`; the towers' widths, depths, the image size and the tokenizer
# all come from them (`mmjax.pretrained.compose`). The image tower is frozen, the decoder trains only
# LoRA adapters, the fusion (the projection of image tokens into the LM's embedding space) and the
# prompt encoder train in full. The config adapts the attention queries and values; this tiny random
# LM learns far faster with an adapter on every projection (attention and MLP), so we widen the
# targets (`**` matches any number of path components).

# %%
data_root = os.path.join(work, "colours")
os.makedirs(data_root)
lines = []
for i in range(24):
  name = list(COLOURS)[i % len(COLOURS)]
  Image.new("RGB", (40, 40), COLOURS[name]).save(os.path.join(data_root, f"{i}.png"))
  lines.append({"image": f"{i}.png", "caption": CAPTIONS[name], "split": "test" if i >= 20 else "train"})
with open(os.path.join(data_root, "manifest.jsonl"), "w") as f:
  f.write("".join(json.dumps(line) + "\n" for line in lines))

config = config_files.load(os.path.join(ROOT, "experiments/configs/pretrained.py"), "prefix_lm")
config.model.init_from_pretrained.image_encoder = SIGLIP
config.model.init_from_pretrained.decoder = GEMMA
config.data.manifest = os.path.join(data_root, "manifest.jsonl")
config.data.data_dir = os.path.join(work, "data")
config.data.max_target_len = 12
config.total_steps = 12 if FAST else 200
config.batch_size = 8
config.eval_every = 0                    # evaluate once, at the end, on the 4 test images
config.eval_batch_size = 4
config.checkpoint_every = config.total_steps
config.log_every = 1 if FAST else 5
config.sample_examples = 2
config.optim.learning_rate = 3e-2 if FAST else 1e-2   # 12 steps need a larger rate than 200
config.optim.warmup_steps = 2
config.model.lora.targets = ("decoder/**/self_attention/*", "decoder/**/mlp/*")
print("LoRA on", config.model.lora.targets, "| trained in full:", config.model.lora.train)
workdir = os.path.join(work, "run")
final = trainer.train_and_evaluate(config, workdir, progress=False)
print({k: round(float(v), 3) for k, v in final.items()})

# %%
curve = [r for r in read_metrics(workdir) if "train/loss" in r]
steps, losses = [r["step"] for r in curve], [r["train/loss"] for r in curve]
fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(steps, losses, marker="o" if FAST else None)
ax.set_xlabel("step")
ax.set_ylabel("train loss")
ax.set_title("SigLIP + Gemma, prefix-LM, LoRA")
fig.savefig(os.path.join(work, "loss.png"), dpi=80)
plt.show()
print(f"loss {losses[0]:.3f} at step {steps[0]} -> {losses[-1]:.3f} at step {steps[-1]}")

# %% [markdown]
# ## Caption the test images
#
# The run loads back from its workdir (with the checkpoint's tokenizer) and decodes greedily with a
# KV cache (`mmjax.sample.generate`): the prefix (image tokens + prompt) is prefilled, then the
# caption is generated token by token. One test image per colour.

# %%
trained = workdir_lib.load(workdir)
tok = trained.data.tokenizer
generate_fn = make_generate_fn(trained.setup, options_from_config(trained.config, tok))
batch = next(trained.data.eval_batches("test", 4, max_examples=4))
answers = generate_fn(trained.params, batch["image"], batch["prompt"], batch["prompt_len"], jax.random.key(0))
captions = [tok.decode(a.tolist()) for a in answers]
fig, axes = plt.subplots(1, 4, figsize=(8, 2.4))
for i, ax in enumerate(axes):
  ax.imshow(batch["image"][i])
  ax.set_title(repr(captions[i]), fontsize=7)
  ax.axis("off")
plt.show()
prompt = tok.decode(batch["prompt"][0, : batch["prompt_len"][0]].tolist())
for i in range(4):
  reference = trained.data.references("test", int(batch["example_id"][i]))
  print(f"{prompt!r} -> {captions[i]!r:28} reference {reference}")

# %% [markdown]
# ## Export back to the Hugging Face layout
#
# `lora.merge` folds each adapter into its kernel (W + scale * A B), leaving a plain decoder;
# `pretrained.export` writes it as a checkpoint of the source's family: the source's `config.json`,
# every tensor in its dtype (`copy_rest=True` copies whatever no given part maps; the tokenizer is
# saved alongside by transformers). `python experiments/export.py --workdir=... --subtree=decoder
# --out=...` does the same from the command line. transformers loads the result like any Gemma and
# computes the fine-tuned decoder's logits.

# %%
merged = lora.merge(jax.device_get(trained.params))["decoder"]
EXPORTED = os.path.join(work, "gemma-finetuned")
files = pretrained.export(EXPORTED, {"decoder": merged}, source=GEMMA, copy_rest=True)
transformers.AutoTokenizer.from_pretrained(GEMMA).save_pretrained(EXPORTED)
print("wrote", [os.path.basename(f) for f in files])

tuned = transformers.GemmaForCausalLM.from_pretrained(EXPORTED).eval()
merged_logits = np.asarray(Decoder(**fields).apply({"params": merged}, jnp.asarray(tokens), Conditioning()))
with torch.no_grad():
  tuned_logits = tuned(torch.as_tensor(tokens)).logits.numpy()
print(f"fine-tuned decoder: relative error vs transformers "
      f"{np.linalg.norm(merged_logits - tuned_logits) / np.linalg.norm(tuned_logits):.2e}; "
      f"change from the source checkpoint {np.linalg.norm(tuned_logits - theirs) / np.linalg.norm(theirs):.2e}")
