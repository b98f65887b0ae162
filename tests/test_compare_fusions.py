"""experiments/proj/shapes/compare_fusions.py: one table row per family read back from its metrics.jsonl, the
README section rewritten between its markers only, reuse of finished runs, config drift refused."""

import importlib.util
import json
import os
import re

import jax
import numpy as np
import pytest
from absl import flags

from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location(
  "compare_fusions", os.path.join(ROOT, "experiments", "proj", "shapes", "compare_fusions.py")
)
cf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)

FAMILIES = ["cross_attention", "prefix_lm"]
README = f"# title\n\n## Fusion comparison\n\nintro\n\n{cf.README_BEGIN}\nold table\n{cf.README_END}\n\n## next\ntext\n"


def _main(*args):
  flags.FLAGS.unparse_flags()
  try:
    cf.main(flags.FLAGS(["compare_fusions.py", *args]))
  finally:
    flags.FLAGS.unparse_flags()


def _tiny_args(workdir, data_dir, families=FAMILIES):
  # The tiny configs (their dataset is shared with the other tests through data_dir), 2 steps.
  return [
    f"--workdir={workdir}",
    f"--families={','.join(families)}",
    "--sizes=tiny",
    "--steps=2",
    "--batch_size=8",
    f"--set=data.data_dir={data_dir}",
    "--set=sampler.max_new_tokens=8",
    "--noprogress",
  ]


def _table_rows(table):
  return [
    [c.strip() for c in line.strip("|").split("|")]
    for line in table.splitlines()
    if line.startswith("| ") and not line.startswith("| family")
  ]


E2E = ["cross_attention", cf.CONTRASTIVE]  # one family, the contrastive row; plus av_matching for the family
# tiny.py's split sizes and log rate, given explicitly so that the av_matching runs use them too (its
# own config has more scenes and logs every 20 steps).
SCENES = [
  "--set=data.shapes.train_scenes=24",
  "--set=data.shapes.validation_scenes=4",
  "--set=data.shapes.test_scenes=4",
  "--set=log_every=1",
]


def _metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def _test_row(workdir, key, step=2):
  return [m for m in _metrics(workdir) if m["step"] == step and key in m][-1]


def test_compare_family_contrastive_row_and_audio_task(shared_data_dir, tmp_path, capsys):
  readme, table_file, wd = tmp_path / "README.md", tmp_path / "table.md", tmp_path / "runs"
  readme.write_text(README)
  args = (
    _tiny_args(wd, shared_data_dir, E2E)
    + SCENES
    + ["--tasks=vqa,av_matching", f"--readme={readme}", f"--table={table_file}"]
  )
  _main(*args)
  table = table_file.read_text().strip()
  header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
  assert header == [
    "family",
    "parameters",
    "train step (ms)",
    "test VQA all",
    "attribute",
    "spatial",
    "relational",
    "test CIDEr-D",
    "test i2t R@1/5/10",
    "test t2i R@1/5/10",
    "zero-shot accuracy",
    "test AV-matching accuracy",
    "wall time",
  ]
  rows = _table_rows(table)
  assert [r[0] for r in rows] == E2E
  from mmjax.train import workdir as workdir_lib

  for family, row in zip(E2E, rows):  # cost columns: the vqa runs in WORKDIR/<family>
    metrics = _metrics(wd / family)
    compare = [m for m in metrics if "compare/parameters" in m][-1]
    # The parameters counted from the trained checkpoint, and the cell states that count to its precision.
    trained = workdir_lib.load(str(wd / family)).params
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained))
    assert compare["compare/parameters"] == n
    assert abs(_parse_count(row[1]) - n) <= (5e3 if row[1].endswith("M") else 50), (row[1], n)
    # The wall time cell is the run's wall time; a step takes less than the whole run; the process's CPU
    # time is positive and at most the wall time on every core.
    wall = sum(m["compare/wall_seconds"] for m in metrics if "compare/wall_seconds" in m)
    assert abs(_parse_duration(row[12]) - wall) <= 0.5, (row[12], wall)
    assert 0 < float(row[2]) < 1000 * wall
    assert 0 < compare["compare/cpu_seconds"] <= wall * os.cpu_count()
  assert rows[0][1] != rows[1][1]

  # The family: VQA and CIDEr-D, – in the contrastive columns, and its av_matching run's accuracy,
  # marked † (cross_attention cannot mask padded audio; the 1 s object sounds fill the 1 s window).
  family = rows[0]
  test = _test_row(wd / "cross_attention", "test/vqa_accuracy")
  expected = [
    f"{test[k]:.3f}"
    for k in (
      "test/vqa_accuracy",
      "test/vqa_accuracy_attribute",
      "test/vqa_accuracy_spatial",
      "test/vqa_accuracy_relational",
    )
  ]
  assert family[3:7] == expected and family[7] == f"{test['test/cider']:.2f}"
  assert family[8:11] == ["–", "–", "–"]
  av_dir = wd / "av_matching" / "cross_attention"
  assert family[11] == f"{_test_row(av_dir, 'test/av_match_accuracy')['test/av_match_accuracy']:.3f}†"
  assert json.loads((av_dir / "config.json").read_text())["model"]["audio"]["mask_padding"] is False
  assert "† cross_attention cannot mask padded audio, so it ran with `model.audio.mask_padding=False`" in table
  av_rate = [m["train/steps_per_second"] for m in _metrics(av_dir) if m["step"] == 2 and "train/steps_per_second" in m]
  av_params = [m for m in _metrics(av_dir) if "compare/parameters" in m][-1]["compare/parameters"]
  assert (
    f"Parameters / train step / wall time: cross_attention {cf._count(av_params)} / {1000 / av_rate[-1]:.1f} ms"
    in table
  ) and av_params > [m for m in _metrics(wd / "cross_attention") if "compare/parameters" in m][-1][
    "compare/parameters"
  ]  # + the audio encoder

  # The contrastive row: retrieval recall@1/5/10 both ways and zero-shot accuracy, – elsewhere.
  contrastive = rows[1]
  test = _test_row(wd / cf.CONTRASTIVE, "test/retrieval_i2t_r1")
  for cell, d in ((contrastive[8], "i2t"), (contrastive[9], "t2i")):
    assert cell == " / ".join(f"{test[f'test/retrieval_{d}_r{k}']:.3f}" for k in (1, 5, 10))
  assert contrastive[10] == f"{test['test/zero_shot_accuracy']:.3f}"
  assert contrastive[3:8] == ["–"] * 5 and contrastive[11] == "–"
  assert "Contrastive row: `experiments/configs/contrastive.py`" in table
  assert (
    "python experiments/proj/shapes/compare_fusions.py --workdir=" in table
    and "2 steps of batch 8 for every run" in table
  )
  assert "--tasks=vqa,av_matching" in table and "5-minute load average at the end of each: " in table

  # README: the text between the markers is the table, everything else is unchanged.
  text = readme.read_text()
  begin, end = text.index(cf.README_BEGIN), text.index(cf.README_END)
  assert text[begin + len(cf.README_BEGIN) : end].strip() == table
  assert text[:begin] == README[: README.index(cf.README_BEGIN)]
  assert text[end:] == README[README.index(cf.README_END) :]

  # A re-run reuses the finished runs: nothing trains again, the numbers are the same.
  runs = [wd / "cross_attention", wd / cf.CONTRASTIVE, av_dir]
  lines = {r: (r / "metrics.jsonl").read_text() for r in runs}
  capsys.readouterr()
  _main(*args)
  assert capsys.readouterr().out.count("reused") == 3
  assert {r: (r / "metrics.jsonl").read_text() for r in runs} == lines
  assert _table_rows(table_file.read_text()) == rows

  # The same workdir under another budget is an error, not a silent mix.
  with pytest.raises(ValueError, match="total_steps"):
    _main(*[a if a != "--steps=2" else "--steps=3" for a in args])


def _parse_count(cell):
  """A parameter-count cell ("12.3K", "1.23M") -> the number it states."""
  return float(cell[:-1]) * {"K": 1e3, "M": 1e6}[cell[-1]]


def _parse_duration(cell):
  """A duration cell ("12.3 s", "2 min 05 s") -> seconds."""
  m = re.fullmatch(r"(?:(\d+) min )?(\d+(?:\.\d+)?) s", cell)
  assert m, cell
  return 60 * int(m.group(1) or 0) + float(m.group(2))


def test_read_run_and_cells_hand_computed(tmp_path):
  """The table's numbers for one run, from a hand-written metrics.jsonl: the step time is the median over
  the logged intervals after the first (compilation) with the last write of a step winning (a resume),
  the wall and CPU times are summed over the run's parts."""
  test = dict(zip(cf.TEST_METRICS, (0.5, 0.25, 0.75, 0.5, 1.5)))
  lines = [
    {"step": 1, "train/steps_per_second": 0.5},  # compilation: left out
    {"step": 2, "train/steps_per_second": 10.0},  # 100 ms
    {"step": 3, "train/steps_per_second": 4.0},  # overwritten by the resumed run's step 3 ...
    {"step": 3, "train/steps_per_second": 5.0},  # ... 200 ms
    {"step": 4, "train/steps_per_second": 20.0},  # 50 ms
    {"step": 5, "train/steps_per_second": 8.0},  # 125 ms
    {"step": 5, **test},
    {"step": 3, cf.WALL: 70.0, cf.CPU: 100.0},  # the first part, stopped at step 3
    {"step": 5, cf.WALL: 60.4, cf.CPU: 90.0, cf.LOAD: 1.5, cf.PARAMS: 1234567},
  ]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  r = cf.read_run(str(tmp_path), 5)
  assert r == dict(
    parameters=1234567,
    step_ms=pytest.approx((100 + 125) / 2),
    wall_seconds=pytest.approx(130.4),
    cpu_seconds=pytest.approx(190.0),
    load_average=1.5,
    **test,
  )
  assert (cf._ms(r["step_ms"]), cf._count(r["parameters"]), cf._duration(r["wall_seconds"])) == (
    "112.5",
    "1.23M",
    "2 min 10 s",
  )
  assert (cf._count(12345), cf._duration(59.94), cf._ms(float("nan"))) == ("12.3K", "59.9 s", "–")
  with pytest.raises(ValueError, match="no finished run of 6 steps"):
    cf.read_run(str(tmp_path), 6)


def test_config_drift_is_an_error(shared_data_dir, tmp_path, monkeypatch):
  drifted = tmp_path / "drifted_prefix_lm.py"
  drifted.write_text(
    "from mmjax import config_files\n\n"
    "def get_config(arg=None):\n"
    f"  c = config_files.load({os.path.join(CONFIGS, 'fusion_prefix_lm.py')!r}, arg)\n"
    "  c.optim.learning_rate = 3e-4\n"
    "  c.model.vit.depth = 2\n"
    "  return c\n"
  )
  monkeypatch.setitem(cf.FAMILY_CONFIGS, "prefix_lm", {"tiny": (str(drifted), None)})
  with pytest.raises(
    ValueError,
    match=r"model.vit.depth: cross_attention 1 vs prefix_lm 2.*"
    r"optim.learning_rate: cross_attention 0.002 vs prefix_lm 0.0003",
  ):
    _main(*_tiny_args(tmp_path / "runs", shared_data_dir))
  assert not (tmp_path / "runs").exists()  # refused before anything trained


def test_contrastive_config_drift(shared_data_dir, tmp_path, monkeypatch):
  """The contrastive row may differ from the families in its model and eval_batch_size only."""
  # At both sizes its config file agrees with the families' on everything else.
  for sizes in ("tiny", "default"):
    cf.comparison_configs(["cross_attention", "flamingo", cf.CONTRASTIVE], ["vqa"], sizes)
  drifted = tmp_path / "drifted_contrastive.py"
  drifted.write_text(
    "from mmjax import config_files\n\n"
    "def get_config(arg=None):\n"
    f"  c = config_files.load({os.path.join(CONFIGS, 'contrastive.py')!r}, arg)\n"
    "  c.model.loss, c.eval_batch_size = 'clip', 16  # may differ\n"
    "  c.optim.warmup_steps = 5\n"
    "  return c\n"
  )
  monkeypatch.setitem(cf.CONTRASTIVE_CONFIGS, "tiny", (str(drifted), "tiny"))
  with pytest.raises(
    ValueError,
    match=r"contrastive config differs from the families' outside its model \(only "
    r"model, eval_batch_size may\): optim.warmup_steps: cross_attention 2 vs "
    r"contrastive 5$",
  ):
    _main(*_tiny_args(tmp_path / "runs", shared_data_dir, ["cross_attention", cf.CONTRASTIVE]))
  assert not (tmp_path / "runs").exists()
  with pytest.raises(ValueError, match="contrastive row has no audio"):
    cf.run_config("av_matching", cf.CONTRASTIVE, "tiny")
  with pytest.raises(ValueError, match="--tasks must include vqa"):
    cf.comparison_configs(["cross_attention"], ["av_matching"], "tiny")


def test_audio_task_configs(shared_data_dir, monkeypatch):
  """Each family's task config is the task file's changes applied to it; families that cannot mask
  padded audio run unmasked when the clips fill the window (av_matching), else not at all
  (speech_vqa); prefix_lm's decoder gets the positions of the audio tokens in its prefix."""
  from mmjax import config_files
  from mmjax.data import prepare
  from mmjax.models import build_model, model_class
  from mmjax.models.vlm import check_fusion_media
  from mmjax.train import batches as batches_lib

  families = list(cf.FAMILY_CONFIGS)
  overrides = [
    ("data.data_dir", shared_data_dir),
    ("data.shapes.train_scenes", 24),
    ("data.shapes.validation_scenes", 4),
    ("data.shapes.test_scenes", 4),
  ]
  configs = cf.comparison_configs(families, ["vqa", "speech_vqa", "av_matching"], "tiny", 2, 8, overrides)
  flat = lambda c: cf._flat(c.to_dict())
  for task in ("speech_vqa", "av_matching"):
    # flamingo's is exactly the task's own config file (which builds on fusion_flamingo.py) ...
    own = config_files.load(os.path.join(CONFIGS, f"{task}.py"), None, dict(overrides))
    own.total_steps, own.batch_size = 2, 8
    assert flat(configs[task]["flamingo"]) == flat(own)
    # ... and every family gets the same changes to its vqa config.
    delta = cf.task_delta(task, "tiny")
    assert "model.audio.width" in delta and not any(k.startswith("model.fusion") for k in delta)
    for f in families:
      expected = {**flat(configs["vqa"][f]), **delta, **dict(overrides), "total_steps": 2, "batch_size": 8}
      assert flat(configs[task][f]) == expected, f

  # The window check on real data: 1 s object sounds fill a 1 s window, not a 1.5 s one.
  av = configs["av_matching"]["cross_attention"].copy_and_resolve_references()
  prepare.prepare(av)
  assert cf._clips_fill_window(av)
  av.data.max_audio_seconds = 1.5
  assert not cf._clips_fill_window(av)

  checked = []
  monkeypatch.setattr(cf, "_clips_fill_window", lambda c: checked.append(c) or not c.data.spoken_questions)
  notes = cf.fit_audio(configs)
  assert len(checked) == 2  # once per task
  speech, av = notes["speech_vqa"], notes["av_matching"]
  assert (
    list(configs["speech_vqa"]) == ["flamingo"]
    and sorted(speech["skipped"]) == sorted(["cross_attention", "prefix_lm", "qformer"])
    and not speech["unmasked"]
  )
  assert "config.model.audio.mask_padding=True" in speech["skipped"]["qformer"]
  assert list(configs["av_matching"]) == families and not av["skipped"]
  assert av["unmasked"] == ["cross_attention", "prefix_lm", "qformer"]
  for f, c in configs["av_matching"].items():
    assert c.model.audio.mask_padding == (f == "flamingo")
    check_fusion_media(c.model)
  old, new = av["max_len"]["prefix_lm"]
  assert list(av["max_len"]) == ["prefix_lm"] and old == configs["vqa"]["prefix_lm"].model.decoder.max_len
  assert new - old == 26  # 1 s at 16 kHz, hop 160: 101 frames -> 51 -> 26 audio tokens after two stride-2 convs
  # With those positions prefix_lm's model takes a whole audio batch (it would not without them).
  c = configs["av_matching"]["prefix_lm"]
  b = batches_lib.dummy_batch(c, 1)
  args, kwargs = model_class(c.model).init_inputs(c.model, b)
  jax.eval_shape(lambda: build_model(c.model, 64).init(jax.random.key(0), *args, **kwargs))
  c.model.decoder.max_len = old
  with pytest.raises(ValueError, match="exceed max_len"):
    jax.eval_shape(lambda: build_model(c.model, 64).init(jax.random.key(0), *args, **kwargs))

  # The table: –* where a family could not run a task, † where it ran unmasked, notes saying why.
  run = {"parameters": 1e5, "step_ms": 10.0, "wall_seconds": 5.0, "cpu_seconds": 5.0, "load_average": 1.0}
  results = {
    "vqa": {f: dict(run, **{k: 0.5 for k in cf.TEST_METRICS}) for f in families},
    "speech_vqa": {"flamingo": dict(run, **{"test/vqa_accuracy": 0.25})},
    "av_matching": {f: dict(run, **{"test/av_match_accuracy": 0.75}) for f in families},
  }
  table = cf.markdown(results, configs, "cmd", "today", "here", tasks=["speech_vqa", "av_matching"], notes=notes)
  rows = {r[0]: r for r in _table_rows(table)}
  assert rows["flamingo"][8:10] == ["0.250", "0.750"] and rows["qformer"][8:10] == ["–*", "0.750†"]
  assert "–* cross_attention, prefix_lm and qformer: not run." in table
  assert "(prefix_lm's `model.decoder.max_len` 96 -> 122: its prefix holds the audio tokens)" in table
  assert "shapes scenes train/validation/test 24/4/4)" in table


@pytest.mark.parametrize(
  "text", ["no markers", f"{cf.README_END}\n{cf.README_BEGIN}", f"{cf.README_BEGIN}{cf.README_BEGIN}{cf.README_END}"]
)
def test_bad_markers(text):
  with pytest.raises(ValueError, match="fusion-comparison"):
    cf.replace_between_markers(text, "table")


def test_overrides():
  assert cf.parse_override("data.shapes.train_scenes=3000") == ("data.shapes.train_scenes", 3000)
  assert cf.parse_override("data.manifest=") == ("data.manifest", "")
  assert cf.parse_override("data.data_dir=/tmp/x") == ("data.data_dir", "/tmp/x")
  with pytest.raises(ValueError, match="key=value"):
    cf.parse_override("data.shapes.train_scenes")
