"""Composing pretrained towers (mmjax.pretrained.compose): tiny random SigLIP and Gemma checkpoints
saved by transformers, joined by the experiments/configs/pretrained.py fusions and fine-tuned on a
manifest with LoRA through the one trainer."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from mmjax import config_files, pretrained
from mmjax.decoders.lm import Decoder
from mmjax.fusion.base import Conditioning
from mmjax.models import lora
from mmjax.pretrained import compose
from mmjax.train import trainer, workdir as workdir_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "white": (250, 250, 250)}
CAPTIONS = {name: f"a plain {name} picture" for name in COLOURS}
CONFIG = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "configs", "pretrained.py")


def _save_tokenizer(path, texts):
  """A small byte-level BPE (tokenizer.json) with <pad>/<bos>/<eos>, saved as transformers saves one."""
  model = tokenizers.Tokenizer(tokenizers.models.BPE())
  model.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  model.decoder = tokenizers.decoders.ByteLevel()
  trainer_ = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"])
  model.train_from_iterator(texts, trainer_)
  fast = transformers.PreTrainedTokenizerFast(
    tokenizer_object=model, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
  )
  fast.save_pretrained(path)
  return len(fast)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  torch.manual_seed(0)
  siglip = transformers.SiglipModel(
    transformers.SiglipConfig(
      vision_config=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
      ),
      text_config=dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=50,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
      ),
    )
  ).eval()
  siglip.save_pretrained(root / "siglip")
  vocab = _save_tokenizer(root / "gemma", list(CAPTIONS.values()) * 4 + ["describe the image."])
  gemma = transformers.GemmaForCausalLM(
    transformers.GemmaConfig(
      vocab_size=vocab,
      hidden_size=32,
      intermediate_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      num_key_value_heads=1,
      head_dim=16,
      max_position_embeddings=128,
      pad_token_id=0,
      bos_token_id=1,
      eos_token_id=2,
    )
  ).eval()
  with torch.no_grad():
    # A trained LM's (tied) embeddings are far larger than init's 0.02: with init's, frozen, the
    # logits could not move more than about one nat, whatever the adapters learn.
    gemma.model.embed_tokens.weight.mul_(20.0)
  gemma.save_pretrained(root / "gemma")
  return str(root / "siglip"), str(root / "gemma")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
  d = tmp_path_factory.mktemp("colours")
  lines = []
  for i in range(24):
    name = list(COLOURS)[i % len(COLOURS)]
    Image.new("RGB", (40, 40), COLOURS[name]).save(d / f"{i}.png")
    lines.append({"image": f"{i}.png", "caption": CAPTIONS[name]})
  (d / "manifest.jsonl").write_text("\n".join(json.dumps(l) for l in lines) + "\n")
  return str(d / "manifest.jsonl")


def _config(fusion, checkpoints, manifest, tmp_path):
  c = config_files.load(CONFIG, fusion)
  with c.unlocked():
    c.model.init_from_pretrained.image_encoder, c.model.init_from_pretrained.decoder = checkpoints
    c.data.manifest = manifest
    c.data.data_dir = str(tmp_path / "data")
    c.total_steps, c.batch_size, c.eval_every, c.checkpoint_every, c.log_every = 30, 8, 0, 30, 1
    c.eval_batch_size, c.eval_max_examples, c.sample_examples = 8, 8, 2
    c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 2
    c.model.lora.targets = ("decoder/**/self_attention/*", "decoder/**/mlp/*")  # every projection of the LM
    if fusion != "prefix_lm":  # smaller new layers: the test is about the composition, not their size
      c.model.fusion.mlp_dim = 64
  return c


def test_configure_takes_the_architectures_and_tokenizer_from_the_checkpoints(checkpoints, manifest, tmp_path):
  c = compose.configure(_config("prefix_lm", checkpoints, manifest, tmp_path))
  assert c.model.vit.width == 32 and c.model.vit.patch_size == 8 and c.model.vit.style.norm_eps == 1e-6
  assert c.data.image_size == 32  # the size SigLIP's learned positions were trained at
  assert c.model.decoder.style.norm == "rmsnorm_offset" and c.model.decoder.scale_embeddings
  assert c.data.tokenizer == checkpoints[1]
  with pytest.raises(ValueError, match="init_from_pretrained.vision"):
    bad = _config("prefix_lm", checkpoints, manifest, tmp_path)
    with bad.unlocked():
      bad.model.init_from_pretrained.vision = checkpoints[0]
    compose.configure(bad)


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["prefix_lm", "flamingo", "qformer"])
def test_fine_tuning_composed_towers_lowers_the_loss(fusion, checkpoints, manifest, tmp_path):
  c = _config(fusion, checkpoints, manifest, tmp_path)
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(c, wd, progress=False)
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl")) if '"train/loss"' in l]
  losses = [r["train/loss"] for r in rows]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses

  trained = workdir_lib.load(wd).params
  flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(trained)).items()}
  # The towers are the checkpoints' weights, untouched (frozen); only their adapters moved.
  image = pretrained.load(checkpoints[0], "image_encoder")
  for k, v in traverse_util.flatten_dict(image).items():
    np.testing.assert_array_equal(flat["image_encoder/" + "/".join(k)], v)
  decoder = pretrained.load(checkpoints[1], "decoder")
  for k, v in traverse_util.flatten_dict(decoder).items():
    got = flat["decoder/" + "/".join(k)]
    # The tokenizer adds no ids here, so even the embedding keeps the checkpoint's shape.
    np.testing.assert_array_equal(got, v, err_msg="/".join(k))
  adapters = [k for k in flat if k.endswith("lora_b")]
  assert adapters and all(np.any(flat[k] != 0) for k in adapters)
  if fusion == "prefix_lm":
    _check_export(wd, trained, tmp_path)


def _check_export(wd, trained, tmp_path):
  """experiments/export.py writes the fine-tuned decoder (adapters merged) as a Gemma checkpoint that
  transformers loads and runs to the logits of mmjax's merged decoder."""
  out = tmp_path / "exported"
  script = os.path.join(os.path.dirname(CONFIG), "..", "export.py")
  done = subprocess.run(
    [sys.executable, script, f"--workdir={wd}", "--subtree=decoder", f"--out={out}"], capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-2000:]
  merged = lora.merge(jax.device_get(trained))["decoder"]
  fields = pretrained.part(str(out), "decoder").fields
  tokens = np.random.default_rng(0).integers(3, fields["vocab_size"], (2, 7))
  ours = Decoder(**fields).apply({"params": merged}, jnp.asarray(tokens), Conditioning())
  ref = transformers.GemmaForCausalLM.from_pretrained(str(out)).eval()
  with torch.no_grad():
    theirs = ref(torch.as_tensor(tokens)).logits.numpy()
  assert np.linalg.norm(np.asarray(ours) - theirs) / np.linalg.norm(theirs) < 1e-5


def test_a_whole_clip_checkpoint_becomes_a_contrastive_model(tmp_path):
  """init_from_pretrained.contrastive: the kind's config (towers, pooling, projections) and all its
  parameters come from a CLIP checkpoint."""
  from mmjax.train import state as state_lib

  torch.manual_seed(1)
  small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
  clip = transformers.CLIPModel(
    transformers.CLIPConfig(
      text_config=dict(
        small, vocab_size=99, bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=64
      ),
      vision_config=dict(small, image_size=32, patch_size=8),
      projection_dim=24,
    )
  )
  clip.save_pretrained(tmp_path / "clip")
  c = config_files.load(os.path.join(os.path.dirname(CONFIG), "contrastive.py"), "tiny")
  with c.unlocked():
    c.model.init_from_pretrained.contrastive = str(tmp_path / "clip")
  c = compose.configure(c)
  assert (c.model.image_pool, c.model.text_pool, c.model.embed_dim, c.model.loss) == ("cls", "eos", 24, "clip")
  assert c.model.vit.pre_norm and not c.model.vit.patch_bias and c.model.vit.mlp_activation == "quick_gelu"
  assert "stem" not in c.model.vit  # the block is the checkpoint's, not merged into the experiment's
  assert c.data.image_size == 32
  setup = state_lib.make_setup(c, 99)
  params = compose.load_into(state_lib.init_state(setup, jax.random.key(0)).params, c)
  want = traverse_util.flatten_dict(pretrained.load(str(tmp_path / "clip"), "contrastive"))
  got = traverse_util.flatten_dict(jax.device_get(params))
  assert set(got) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k], v)
