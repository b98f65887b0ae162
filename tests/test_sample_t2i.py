"""experiments/sample.py on a text-to-image workdir: --prompt draws a PNG grid (rows = prompts, columns = --num),
seeded; --split writes the evaluator's report; prompt and flag errors are one line. And the two helpers it
shares with the notebooks, text_to_image.encode_prompts and image_grid, on hand-made cases."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mmjax import config_files
from mmjax.sample.text_to_image import encode_prompts, image_grid, make_generate_fn, sampler_options
from mmjax.tokenizer import Tokenizer
from mmjax.train import trainer, workdir as workdir_lib
from tests.conftest import CONFIGS, ROOT

PROMPTS = ["a red circle to the left of a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_data_dir):
  """A tiny t2i_flow workdir (8 steps; sampler: Heun, 4 steps, guidance 3)."""
  c = config_files.load(os.path.join(CONFIGS, "t2i_flow.py"), "tiny")
  c.data.data_dir = shared_data_dir
  wd = str(tmp_path_factory.mktemp("t2i_sample") / "run")
  trainer.train_and_evaluate(c, wd, progress=False)
  return wd


def _sample(cwd, *flags):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user runs it
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "sample.py"), *flags],
    capture_output=True,
    text=True,
    env=env,
    cwd=cwd,
    timeout=300,
  )


def _last_line(r) -> str:
  return r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""


def test_cli_draws_a_seeded_grid(workdir, tmp_path):
  flags = [f"--workdir={workdir}", *[f"--prompt={p}" for p in PROMPTS], "--num=3"]
  r = _sample(tmp_path, *flags, "--steps=2")
  assert r.returncode == 0, r.stderr[-2000:]
  # The default --out: t2i_grid.png in the current directory, named on the first line printed.
  out = tmp_path / "t2i_grid.png"
  lines = r.stdout.splitlines()
  assert lines[0].startswith("wrote t2i_grid.png") and lines[1:] == [f"  row {i}: {p}" for i, p in enumerate(PROMPTS)]
  grid = np.asarray(Image.open(out))
  # 2 rows x 3 columns of 32x32 images shown 4x (128 px), 2-pixel white gaps between cells.
  assert grid.shape == (2 * 128 + 2, 3 * 128 + 2 * 2, 3) and grid.dtype == np.uint8
  assert (grid[128:130] == 255).all() and (grid[:, 128:130] == 255).all() and (grid[:, 258:260] == 255).all()

  # The grid holds what make_generate_fn draws for the prompts repeated --num times, from key(--seed) (one
  # batch: 6 rows <= eval_batch_size, so fold_in(key, 0)), at the workdir's sampler with --steps=2.
  t = workdir_lib.load(workdir)
  tokens, lengths = encode_prompts(t.data.tokenizer, PROMPTS, int(t.config.model.text.max_len))
  run = make_generate_fn(t.setup, sampler_options(t.config, steps=2))
  images = run(
    t.params, np.repeat(tokens, 3, 0), np.repeat(lengths, 3, 0), jax.random.fold_in(jax.random.key(0), 0), 3.0
  )
  np.testing.assert_array_equal(grid, image_grid(images.reshape(2, 3, 32, 32, 3), 4))

  # The same seed draws the same file; another seed other images.
  same = tmp_path / "same.png"
  r = _sample(tmp_path, *flags, "--steps=2", f"--out={same}")
  assert r.returncode == 0 and r.stdout.startswith(f"wrote {same}"), r.stderr[-2000:]
  assert same.read_bytes() == out.read_bytes()
  other = tmp_path / "other.png"
  r = _sample(tmp_path, *flags, "--steps=2", "--seed=1", f"--out={other}")
  assert r.returncode == 0, r.stderr[-2000:]
  other_grid = np.asarray(Image.open(other))
  assert other_grid.shape == grid.shape and not np.array_equal(other_grid, grid)


def test_cli_split_report(workdir, tmp_path):
  r = _sample(tmp_path, f"--workdir={workdir}", "--split=test", "--num=2")
  assert r.returncode == 0, r.stderr[-2000:]
  samples = os.path.join(workdir, "samples")
  assert f"wrote {samples}/test_samples.png and {samples}/test_samples.txt" in r.stdout
  assert "guided: t2i_object_accuracy=" in open(os.path.join(samples, "test_samples.txt")).read()
  for key in ("object", "scene", "relation"):
    assert f"test/t2i_{key}_accuracy: " in r.stdout and f"test/t2i_{key}_accuracy_noguidance: " in r.stdout


def test_cli_errors(workdir, tmp_path):
  wd = f"--workdir={workdir}"
  r = _sample(tmp_path, wd, "--prompt=  ")
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert _last_line(r).startswith("prompt 0 is empty"), r.stderr[-2000:]
  # 13 tokens a repeat of "a red circle" with the run's own tokenizer (3 pieces): 39 > text.max_len = 24.
  long = " ".join(["a red circle"] * 13)
  n = len(Tokenizer.load(os.path.join(workdir, "tokenizer.model")).encode(long))
  assert n > 24
  r = _sample(tmp_path, wd, f"--prompt={long}")
  assert r.returncode != 0 and "Traceback" not in r.stderr
  assert _last_line(r) == f"prompt {long!r} is {n} tokens; this model's text encoder reads at most 24.", r.stderr[
    -2000:
  ]
  # Flag errors come from the config alone, before the model is loaded.
  image = tmp_path / "x.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  r = _sample(tmp_path, wd, f"--image={image}", "--prompt=a red circle")
  assert r.returncode != 0 and _last_line(r).startswith("--image: this workdir holds a text-to-image model"), r.stderr
  r = _sample(tmp_path, wd, "--prompt=a red circle", "--temperature=0.5")
  assert r.returncode != 0 and _last_line(r).startswith("--temperature: this workdir's text-to-image sampler"), r.stderr
  r = _sample(tmp_path, wd, "--prompt=a red circle", "--candidates=4")
  assert r.returncode != 0 and _last_line(r).startswith("--candidates=4: config.sampler.candidates=4: a flow"), r.stderr
  assert not os.path.exists(tmp_path / "t2i_grid.png")
  # --guidance / --steps on a workdir that draws nothing (a config.json alone suffices).
  vlm = tmp_path / "vlm"
  vlm.mkdir()
  (vlm / "config.json").write_text(config_files.load(os.path.join(CONFIGS, "tiny.py")).to_json_best_effort())
  r = _sample(tmp_path, f"--workdir={vlm}", f"--image={image}", "--prompt=what?", "--guidance=2")
  assert r.returncode != 0 and _last_line(r).startswith("--guidance: these go with a text-to-image workdir"), r.stderr


def test_sampler_options_candidates():
  """Best-of-N (config.sampler.candidates) for the causal drawing kinds; an error naming the key elsewhere."""
  load = lambda name: config_files.load(os.path.join(CONFIGS, name), "tiny")
  assert sampler_options(load("t2i_pixels.py"))["candidates"] == 2
  assert sampler_options(load("t2i_tokens.py"), candidates=3)["candidates"] == 3
  with pytest.raises(ValueError, match=r"^config.sampler.candidates=0: must be >= 1\.$"):
    sampler_options(load("t2i_pixels.py"), candidates=0)
  masked = load("t2i_tokens.py")
  masked.model.image_decoding = "masked"
  assert sampler_options(masked)["candidates"] == 1
  with pytest.raises(ValueError, match=r"^config.sampler.candidates=2: a masked \(MaskGIT\) model has no drawing"):
    sampler_options(masked, candidates=2)
  with pytest.raises(ValueError, match=r"^config.sampler.candidates=2: a flow-matching model has no exact likelihood"):
    sampler_options(load("t2i_flow.py"), candidates=2)


def test_sampler_options_plausibility():
  """Guidance among the plausible indices (config.sampler.plausibility) for the token kinds; checked; an
  error naming the key for a flow model."""
  load = lambda name: config_files.load(os.path.join(CONFIGS, name), "tiny")
  assert sampler_options(load("t2i_pixels.py"))["plausibility"] == 0.01
  assert sampler_options(load("t2i_tokens.py"))["plausibility"] == 0.0
  assert sampler_options(load("t2i_tokens.py"), plausibility=0.2)["plausibility"] == 0.2
  for bad in (1.0, -0.5):
    with pytest.raises(ValueError, match=rf"^config.sampler.plausibility={bad} must be in \[0, 1\)\.$"):
      sampler_options(load("t2i_pixels.py"), plausibility=bad)
  with pytest.raises(ValueError, match=r"^config.sampler.plausibility=0.1: a flow-matching model draws no indices"):
    sampler_options(load("t2i_flow.py"), plausibility=0.1)


class _Words:
  """A tokenizer stub: one id per word (encode(text) -> ids, unk_id, pad_id), `unknown` words -> unk_id."""

  unk_id, pad_id = 3, 0

  def __init__(self, unknown=()):
    self.unknown, self.vocab = set(unknown), {}

  def encode(self, text):
    return [self.unk_id if w in self.unknown else self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


def test_encode_prompts(workdir):
  tok = Tokenizer.load(os.path.join(workdir, "tokenizer.model"))
  tokens, lengths = encode_prompts(tok, ["a red circle", "  a  blue\tsquare ", "a"], 6)
  want = [tok.encode(t) for t in ("a red circle", "a blue square", "a")]  # whitespace runs: one space
  assert tokens.dtype == np.int32 and tokens.shape == (3, 6) and lengths.tolist() == [len(w) for w in want]
  for row, w in zip(tokens, want):
    assert row.tolist() == w + [tok.pad_id] * (6 - len(w))  # no BOS / EOS
  assert tok.bos_id not in tokens and tok.eos_id not in tokens
  # Exactly max_len tokens fit; one more is an error naming the prompt, its count and the limit.
  assert encode_prompts(tok, ["a red circle"], len(want[0]))[1].tolist() == [len(want[0])]
  with pytest.raises(
    ValueError, match=rf"prompt 'a red circle' is {len(want[0])} tokens; .* at most {len(want[0]) - 1}\."
  ):
    encode_prompts(tok, ["a red circle"], len(want[0]) - 1)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    encode_prompts(tok, ["a red circle", " \n "], 6)
  with pytest.raises(ValueError, match="no prompts"):
    encode_prompts(tok, [], 6)


def test_encode_prompts_names_unknown_words():
  tok = _Words(unknown={"zebra", "okapi"})
  with pytest.raises(
    ValueError, match=r"^prompt 'a zebra and an okapi and a zebra': .* for 'zebra', 'okapi' \(.*id 3\)"
  ):
    encode_prompts(tok, ["a red circle", "a zebra and an okapi and a zebra"], 16)
  # Known words encode as the tokenizer has them; a tokenizer without an unknown token is not checked.
  tokens, lengths = encode_prompts(tok, ["a red circle"], 4)
  assert tokens.tolist() == [tok.encode("a red circle") + [0]] and lengths.tolist() == [3]
  plain = _Words()
  plain.unk_id = None
  assert encode_prompts(plain, ["a zebra"], 4)[1].tolist() == [2]

  class Context(_Words):  # an unknown piece that no word alone gives: counted instead of named
    def encode(self, text):
      return super().encode(text) + ([self.unk_id] if len(text.split()) > 1 else [])

  with pytest.raises(ValueError, match=r"^prompt 'a cat': the tokenizer has 1 unknown piece\(s\) in it \(.*id 3\)"):
    encode_prompts(Context(), ["a cat"], 8)


def test_image_grid_layout():
  # 2 rows x 3 columns of 2x1 images (H=2, W=1), each cell a constant colour r * 3 + c + 1, one pixel of row
  # 1 column 2 marked; scale 2, gap 1 (grey 7).
  images = np.zeros((2, 3, 2, 1, 3), np.uint8)
  for r in range(2):
    for c in range(3):
      images[r, c] = r * 3 + c + 1
  images[1, 2, 1, 0] = (200, 100, 50)
  grid = image_grid(images, scale=2, gap=1, background=7)
  assert grid.dtype == np.uint8 and grid.shape == (2 * 4 + 1, 3 * 2 + 2, 3)
  expect = np.full((9, 8), 7)
  for r in range(2):
    for c in range(3):
      expect[r * 5 : r * 5 + 4, c * 3 : c * 3 + 2] = r * 3 + c + 1
  expect[7:9, 6:8] = 200  # the marked pixel, 2x2 at the bottom right
  np.testing.assert_array_equal(grid[..., 0], expect)
  np.testing.assert_array_equal(grid[7:9, 6:8], np.full((2, 2, 3), (200, 100, 50)))
  assert (grid[4] == 7).all() and (grid[:, 2] == 7).all() and (grid[:, 5] == 7).all()  # the gaps
  # Defaults: scale 1 and a 2-pixel white gap; one image is itself.
  np.testing.assert_array_equal(image_grid(images[:1, :1]), images[0, 0])
  assert image_grid(images).shape == (2 * 2 + 2, 3 + 4, 3) and (image_grid(images)[2:4] == 255).all()
  with pytest.raises(ValueError, match="uint8 images"):
    image_grid(images[0])
  with pytest.raises(ValueError, match="scale=0"):
    image_grid(images, scale=0)
