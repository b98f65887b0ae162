"""Executes every notebook (jupytext .py source -> nbclient, kernel python3) in fast mode, then checks
what it computed against independent expectations: a cell appended to each notebook prints the values
(as `MMJAX_CHECK <json>`), and the test compares them with references computed here."""

import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "notebooks")) if f[:2].isdigit() and f.endswith(".py"))


def test_notebooks_are_paired():
  import jupytext

  assert NOTEBOOKS == [
    "01_quickstart",
    "02_fusion_prototyping",
    "03_attention_and_masks",
    "04_text_to_image",
    "05_pretrained_towers",
  ]
  for name in NOTEBOOKS:
    ipynb = os.path.join(ROOT, "notebooks", name + ".ipynb")
    assert os.path.exists(ipynb), f"{name}.ipynb is missing: run `jupytext --to ipynb notebooks/{name}.py`."
    src = [c.source for c in jupytext.read(os.path.join(ROOT, "notebooks", name + ".py")).cells]
    paired = [c.source for c in jupytext.read(ipynb).cells]
    assert src == paired, f"{name}.ipynb is out of date: run `jupytext --to ipynb notebooks/{name}.py`."


# Appended to each notebook: reads the notebook's variables and prints what the test checks.
CHECK_CELLS = {
  # The generated answers against the notebook's teacher-forced pass of the same model over them (no KV
  # cache; its logits are the root module's captured output): the logit of each generated token, the
  # largest logit at that position, the trained step.
  "01_quickstart": """
import json
logits = np.asarray(inter["__call__"][0], np.float64)
assert logits.shape == answers.shape + (model.vocab_size,), logits.shape
ans = np.asarray(answers)
chosen = np.take_along_axis(logits, ans[..., None], -1)[..., 0]
print("MMJAX_CHECK " + json.dumps(dict(
    step=int(trained.step), total_steps=int(config.total_steps), answers=ans.tolist(), chosen=chosen.tolist(),
    best=logits.max(-1).tolist(), eos=int(tok.eos_id), pad=int(tok.pad_id))))
""",
  # The notebook's new fusion on fixed inputs with random parameters, and the logged loss curves.
  "02_fusion_prototyping": """
import json
import jax
import numpy as np
_rng = np.random.default_rng(0)
_img = _rng.normal(size=(2, 8, 6)).astype(np.float32)
_txt = _rng.normal(size=(2, 3, 5)).astype(np.float32)
_tlen = np.array([3, 1], np.int32)
_f = PooledPrefixFusion(width=4, pool=2)
_p = nn.meta.unbox(_f.init(jax.random.key(0), {"image": (_img, None)}, (_txt, _tlen))["params"])
_p = jax.tree.map(lambda x: _rng.normal(size=x.shape).astype(np.float32), _p)
_cond = _f.apply({"params": _p}, {"image": (_img, None)}, (_txt, _tlen))
print("MMJAX_CHECK " + json.dumps(dict(
    image=_img.tolist(), text=_txt.tolist(), text_len=_tlen.tolist(),
    params=jax.tree.map(lambda x: np.asarray(x).tolist(), _p),
    prefix=np.asarray(_cond.prefix).tolist(), prefix_len=np.asarray(_cond.prefix_len).tolist(),
    memory=_cond.memory is None,
    steps={k: [r["step"] for r in v if "train/loss" in r] for k, v in curves.items()})))
""",
  # Each mask as a dense matrix and as the kernels' tile map, and the implementations' errors.
  "03_attention_and_masks": """
import json
print("MMJAX_CHECK " + json.dumps(dict(
    block=BLOCK, results=[list(r) for r in results],
    masks={k: dict(dense=np.asarray(spec.dense(1, sq, skv)[0]).astype(int).tolist(),
                   tiles=np.asarray(tile_map(spec, 1, sq, skv, BLOCK, BLOCK)[0]).tolist())
           for k, (spec, sq, skv) in masks.items()})))
""",
  # The workdir, the prompts' tokens, the drawn images (guided, and guidance 1 / 3 on the same noise), the grid's
  # shape and bytes, the evaluator's metrics and the trainer's final ones.
  "04_text_to_image": """
import hashlib
import json
print("MMJAX_CHECK " + json.dumps(dict(
    workdir=workdir, step=int(trained.step), total_steps=int(config.total_steps), prompts=prompts, columns=COLUMNS,
    scale=SCALE, tokens=tokens.tolist(), lengths=lengths.tolist(), images=images.tolist(), plain=plain.tolist(),
    guided=guided.tolist(), grid_shape=list(grid.shape), grid_sha=hashlib.sha256(grid.tobytes()).hexdigest(),
    metrics=metrics, final={k: float(v) for k, v in final.items()})))
""",
  # The checkpoints' directories, mmjax's logits of the source and of the fine-tuned (merged) decoder on
  # fixed tokens, the logged loss curve, and the generated captions.
  "05_pretrained_towers": """
import json
print("MMJAX_CHECK " + json.dumps(dict(
    work=work, source=GEMMA, exported=EXPORTED, tokens=tokens.tolist(),
    source_logits=np.asarray(ours).tolist(), tuned_logits=np.asarray(merged_logits).tolist(),
    total_steps=int(config.total_steps), steps=steps, losses=losses,
    answers=np.asarray(answers).tolist(), captions=captions, eos=int(tok.eos_id), pad=int(tok.pad_id))))
""",
}


@pytest.fixture(autouse=True)
def _notebook_tmpdir(tmp_path, monkeypatch):
  """The notebooks keep their workdirs (tempfile.mkdtemp) for the user to look at; under the tests they go
  to pytest's temporary folder, which pytest prunes, instead of piling up in /tmp."""
  monkeypatch.setenv("TMPDIR", str(tmp_path))


def run_notebook(name, data_dir, monkeypatch):
  """Executes notebook `name` with its check cell appended; returns what the check cell printed."""
  import jupytext
  import nbclient
  import nbformat

  monkeypatch.setenv("MMJAX_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("MMJAX_DATA_DIR", data_dir)
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # the notebooks run on one CPU device
  nb = jupytext.read(os.path.join(ROOT, "notebooks", name + ".py"))
  nb.cells.append(nbformat.v4.new_code_cell(CHECK_CELLS[name]))
  client = nbclient.NotebookClient(
    nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}
  )
  client.execute()  # raises CellExecutionError naming the failing cell
  text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
  lines = [line for line in text.splitlines() if line.startswith("MMJAX_CHECK ")]
  assert len(lines) == 1, text
  return json.loads(lines[0][len("MMJAX_CHECK ") :])


def test_notebook_01_quickstart(shared_data_dir, monkeypatch):
  out = run_notebook("01_quickstart", shared_data_dir, monkeypatch)
  assert out["step"] == out["total_steps"] == 2  # the loaded run is the one the notebook trained (fast mode)
  answers, chosen, best = np.asarray(out["answers"]), np.asarray(out["chosen"]), np.asarray(out["best"])
  for row in range(len(answers)):
    eos = np.flatnonzero(answers[row] == out["eos"])
    n = eos[0] + 1 if len(eos) else answers.shape[1]
    # Greedy decoding: up to and including EOS every token is the argmax of the teacher-forced logits
    # (to float32 round-off between the KV-cache and the full pass) ...
    np.testing.assert_allclose(chosen[row, :n], best[row, :n], atol=1e-4, err_msg=f"row {row}")
    # ... and after EOS there is only padding.
    assert (answers[row, n:] == out["pad"]).all(), answers[row]


def test_notebook_02_fusion_prototyping(shared_data_dir, monkeypatch):
  out = run_notebook("02_fusion_prototyping", shared_data_dir, monkeypatch)
  # PooledPrefixFusion against float64 numpy: mean-pool 8 image tokens into 2 groups of 4, project
  # them and the prompt tokens, put them side by side; the prefix is 2 + prompt length long.
  img, txt, p = np.asarray(out["image"]), np.asarray(out["text"]), out["params"]
  dense = lambda name, x: x @ np.asarray(p[name]["kernel"]) + np.asarray(p[name]["bias"])
  pooled = img.reshape(2, 2, 4, 6).mean(2)
  want = np.concatenate([dense("proj_image", pooled), dense("proj_text", txt)], 1)
  np.testing.assert_allclose(out["prefix"], want, rtol=1e-5, atol=1e-5)
  assert out["prefix_len"] == [2 + 3, 2 + 1] and out["memory"]  # no cross-attention memory
  # Both families trained through the real trainer and logged every step (fast mode: 2 steps).
  assert out["steps"] == {"pooled_prefix (new)": [1, 2], "cross_attention": [1, 2]}


def test_notebook_03_attention_and_masks(shared_data_dir, monkeypatch):
  out = run_notebook("03_attention_and_masks", shared_data_dir, monkeypatch)
  block = out["block"]
  for name, m in out["masks"].items():
    dense, tiles = np.asarray(m["dense"], bool), np.asarray(m["tiles"])
    # The tile map read off the dense mask: 0 no allowed pair in the block, 2 all allowed, 1 some;
    # pairs past the end of the keys (Flamingo's 30 latents are 2 blocks of 16) are never allowed.
    rows, cols = -(-dense.shape[0] // block), -(-dense.shape[1] // block)
    dense = np.pad(dense, ((0, rows * block - dense.shape[0]), (0, cols * block - dense.shape[1])))
    blocks = dense.reshape(rows, block, cols, block)
    expect = np.where(blocks.all((1, 3)), 2, np.where(blocks.any((1, 3)), 1, 0))
    np.testing.assert_array_equal(tiles, expect, err_msg=name)
  # Hand-derived masks (S = 64 in fast mode): packed causal segments of 32, 16, 16 rows, and memory
  # padding after 40 of 64 keys.
  i, j = np.arange(64)[:, None], np.arange(64)[None]
  seg = np.repeat([0, 1, 2], [32, 16, 16])
  np.testing.assert_array_equal(out["masks"]["packed, causal"]["dense"], (seg[i] == seg[j]) & (j <= i))
  np.testing.assert_array_equal(out["masks"]["memory padding"]["dense"], np.broadcast_to(j < 40, (64, 64)))
  # Every implementation that ran here matches the XLA reference, and more than XLA itself ran.
  assert all(err < 1e-4 for _, _, err in out["results"]), out["results"]
  assert {impl for _, impl, _ in out["results"]} - {"xla"}, out["results"]


def test_notebook_04_text_to_image(shared_data_dir, monkeypatch):
  import hashlib

  from mmjax.tokenizer import Tokenizer

  out = run_notebook("04_text_to_image", shared_data_dir, monkeypatch)
  try:
    assert out["step"] == out["total_steps"] == 8  # the loaded run is the one the notebook trained (fast mode)
    # The prompts as the run's own tokenizer encodes them: no BOS / EOS, padded to text.max_len (24).
    tok = Tokenizer.load(os.path.join(out["workdir"], "tokenizer.model"))
    for p, row, n in zip(out["prompts"], out["tokens"], out["lengths"]):
      assert n == len(tok.encode(p)) and row == tok.encode(p) + [tok.pad_id] * (24 - n), (p, row)
    # One image per (prompt, column), prompt-major; the grid is each upscaled `scale` times with nearest
    # neighbour (32 -> 128 px), 2-pixel white gaps between cells and none around them.
    images, rows, cols, scale = np.asarray(out["images"], np.uint8), len(out["prompts"]), out["columns"], out["scale"]
    assert images.shape == (rows * cols, 32, 32, 3) and scale == 4
    cell = 32 * scale
    want = np.full((rows * cell + (rows - 1) * 2, cols * cell + (cols - 1) * 2, 3), 255, np.uint8)
    for i, image in enumerate(images):
      r, c = divmod(i, cols)
      want[r * (cell + 2) : r * (cell + 2) + cell, c * (cell + 2) : c * (cell + 2) + cell] = np.kron(
        image, np.ones((scale, scale, 1), np.uint8)
      )
    assert out["grid_shape"] == list(want.shape) and out["grid_sha"] == hashlib.sha256(want.tobytes()).hexdigest()
    # The same noise: guidance 3 again is the grid's images exactly (config.sampler.guidance = 3), and guidance 1
    # draws other images (the two conditions already differ after 8 steps).
    plain, guided = np.asarray(out["plain"]), np.asarray(out["guided"])
    np.testing.assert_array_equal(guided, images)
    assert plain.shape == guided.shape and not np.array_equal(plain, guided)
    # The evaluator repeats the trainer's final test evaluation: the six t2i metrics, each in [0, 1].
    keys = sorted(f"test/t2i_{m}_accuracy{s}" for m in ("object", "scene", "relation") for s in ("", "_noguidance"))
    assert sorted(out["metrics"]) == sorted(out["final"]) == keys
    for k in keys:
      assert 0.0 <= out["metrics"][k] <= 1.0 and out["metrics"][k] == pytest.approx(out["final"][k]), k
  finally:
    shutil.rmtree(out["workdir"], ignore_errors=True)


def test_notebook_05_pretrained_towers(shared_data_dir, monkeypatch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from safetensors.numpy import load_file

  out = run_notebook("05_pretrained_towers", shared_data_dir, monkeypatch)
  try:
    tokens = torch.as_tensor(out["tokens"])
    logits = {}
    for key in ("source", "exported"):
      # transformers itself runs the source and the exported checkpoint: mmjax's decoder loaded from
      # the source, and its fine-tuned (LoRA-merged) decoder, compute the same logits.
      with torch.no_grad():
        logits[key] = transformers.GemmaForCausalLM.from_pretrained(out[key]).eval()(tokens).logits.numpy()
    rel = lambda a, b: np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)
    assert rel(out["source_logits"], logits["source"]) < 1e-5
    assert rel(out["tuned_logits"], logits["exported"]) < 1e-5
    assert rel(logits["exported"], logits["source"]) > 0.1  # fine-tuning changed the decoder

    # The exported checkpoint is the source's layout (same config, tensor names, shapes and dtypes);
    # only the projections that carried LoRA adapters (every attention and MLP projection of the LM)
    # moved, the frozen rest (embeddings, norms) is the source's bit for bit.
    with open(os.path.join(out["source"], "config.json")) as f, open(os.path.join(out["exported"], "config.json")) as g:
      assert json.load(f) == json.load(g)
    files = lambda d: sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))
    src = {k: v for n in files(out["source"]) for k, v in load_file(os.path.join(out["source"], n)).items()}
    exp = {k: v for n in files(out["exported"]) for k, v in load_file(os.path.join(out["exported"], n)).items()}
    assert sorted(src) == sorted(exp)
    adapted = re.compile(r"model\.layers\.\d+\.(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.weight")
    assert sum(bool(adapted.fullmatch(k)) for k in src) == 2 * 7, sorted(src)
    for k in src:
      assert exp[k].dtype == src[k].dtype and exp[k].shape == src[k].shape, k
      if adapted.fullmatch(k):
        assert np.any(exp[k] != src[k]), k
      else:
        np.testing.assert_array_equal(exp[k], src[k], err_msg=k)

    # Fine-tuning (fast mode: 12 steps, every one logged) lowered the loss well below where it started
    # and below the uniform guess over the vocabulary.
    vocab = json.load(open(os.path.join(out["source"], "config.json")))["vocab_size"]
    losses = np.asarray(out["losses"])
    assert out["total_steps"] == 12 and out["steps"] == list(range(1, 13)), out["steps"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.5 * losses[0] and losses[-3:].mean() < 0.5 * losses[:3].mean(), losses
    assert losses[-1] < math.log(vocab), (losses, vocab)

    # Each caption: pad after the first EOS, and the text transformers' tokenizer (saved beside the
    # exported checkpoint) decodes from the ids up to it.
    tokenizer = transformers.AutoTokenizer.from_pretrained(out["exported"])
    for ids, caption in zip(out["answers"], out["captions"]):
      ids = np.asarray(ids)
      eos = np.flatnonzero(ids == out["eos"])
      n = eos[0] if len(eos) else len(ids)
      assert (ids[n + 1 :] == out["pad"]).all(), ids
      assert tokenizer.decode(ids[:n].tolist(), skip_special_tokens=True).strip() == caption.strip(), (ids, caption)
  finally:
    shutil.rmtree(out["work"], ignore_errors=True)
