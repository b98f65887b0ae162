"""experiments/compare_fusions.py: one table row per family read back from its metrics.jsonl, the
README section rewritten between its markers only, reuse of finished runs, config drift refused."""
import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from absl import flags

from tests.conftest import CONFIGS, ROOT

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("compare_fusions", os.path.join(ROOT, "experiments",
                                                                               "compare_fusions.py"))
cf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cf)

FAMILIES = ["cross_attention", "prefix_lm"]
README = (f"# title\n\n## Fusion comparison\n\nintro\n\n{cf.README_BEGIN}\nold table\n{cf.README_END}\n\n"
          "## next\ntext\n")


def _main(*args):
  flags.FLAGS.unparse_flags()
  try:
    cf.main(flags.FLAGS(["compare_fusions.py", *args]))
  finally:
    flags.FLAGS.unparse_flags()


def _tiny_args(workdir, data_dir, families=FAMILIES):
  # The tiny configs (their dataset is shared with the other tests through data_dir), 2 steps.
  return [f"--workdir={workdir}", f"--families={','.join(families)}", "--sizes=tiny", "--steps=2",
          "--batch_size=8", f"--set=data.data_dir={data_dir}", "--set=sampler.max_new_tokens=8", "--noprogress"]


def _table_rows(table):
  return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
          if line.startswith("| ") and not line.startswith("| family")]


def test_compare_two_families(shared_data_dir, tmp_path, capsys):
  readme, table_file, wd = tmp_path / "README.md", tmp_path / "table.md", tmp_path / "runs"
  readme.write_text(README)
  args = _tiny_args(wd, shared_data_dir) + [f"--readme={readme}", f"--table={table_file}"]
  _main(*args)
  table = table_file.read_text().strip()
  rows = _table_rows(table)
  assert [r[0] for r in rows] == FAMILIES
  from mmjax.train import workdir as workdir_lib
  for family, row in zip(FAMILIES, rows):
    with open(wd / family / "metrics.jsonl") as f:
      metrics = [json.loads(line) for line in f]
    test = [m for m in metrics if m["step"] == 2 and "test/vqa_accuracy" in m][-1]
    expected = [f"{test[k]:.3f}" for k in ("test/vqa_accuracy", "test/vqa_accuracy_attribute",
                                           "test/vqa_accuracy_spatial", "test/vqa_accuracy_relational")]
    assert row[3:7] == expected and row[7] == f"{test['test/cider']:.2f}"
    rate = [m["train/steps_per_second"] for m in metrics if m["step"] == 2 and "train/steps_per_second" in m]
    assert row[2] == f"{1000 / rate[-1]:.1f}"  # step 1 (compilation) is left out of the median
    compare = [m for m in metrics if "compare/parameters" in m][-1]
    trained = workdir_lib.load(str(wd / family)).params
    assert compare["compare/parameters"] == sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trained))
    assert row[1] == cf._count(compare["compare/parameters"])
    assert row[8] == cf._duration(compare["compare/wall_seconds"]) and compare["compare/cpu_seconds"] > 0
  assert rows[0][1] != rows[1][1]  # the families do differ
  assert "python experiments/compare_fusions.py --workdir=" in table and "2 steps of batch 8" in table
  assert "5-minute load average at the end of each: " in table

  # README: the text between the markers is the table, everything else is unchanged.
  text = readme.read_text()
  begin, end = text.index(cf.README_BEGIN), text.index(cf.README_END)
  assert text[begin + len(cf.README_BEGIN):end].strip() == table
  assert text[:begin] == README[:README.index(cf.README_BEGIN)]
  assert text[end:] == README[README.index(cf.README_END):]

  # A re-run reuses the finished runs: nothing trains again, the numbers are the same.
  lines = {f: (wd / f / "metrics.jsonl").read_text() for f in FAMILIES}
  capsys.readouterr()
  _main(*args)
  assert capsys.readouterr().out.count("reused") == 2
  assert {f: (wd / f / "metrics.jsonl").read_text() for f in FAMILIES} == lines
  assert _table_rows(table_file.read_text()) == rows

  # The same workdir under another budget is an error, not a silent mix.
  with pytest.raises(ValueError, match="total_steps"):
    _main(*[a if a != "--steps=2" else "--steps=3" for a in args])


def test_config_drift_is_an_error(shared_data_dir, tmp_path, monkeypatch):
  drifted = tmp_path / "drifted_prefix_lm.py"
  drifted.write_text(
      "from mmjax import config_files\n\n"
      "def get_config(arg=None):\n"
      f"  c = config_files.load({os.path.join(CONFIGS, 'fusion_prefix_lm.py')!r}, arg)\n"
      "  c.optim.learning_rate = 3e-4\n"
      "  c.model.vit.depth = 2\n"
      "  return c\n")
  monkeypatch.setitem(cf.FAMILY_CONFIGS, "prefix_lm", {"tiny": (str(drifted), None)})
  with pytest.raises(ValueError, match=r"model.vit.depth: cross_attention 1 vs prefix_lm 2.*"
                                       r"optim.learning_rate: cross_attention 0.001 vs prefix_lm 0.0003"):
    _main(*_tiny_args(tmp_path / "runs", shared_data_dir))
  assert not (tmp_path / "runs").exists()  # refused before anything trained


@pytest.mark.parametrize("text", ["no markers", f"{cf.README_END}\n{cf.README_BEGIN}",
                                  f"{cf.README_BEGIN}{cf.README_BEGIN}{cf.README_END}"])
def test_bad_markers(text):
  with pytest.raises(ValueError, match="fusion-comparison"):
    cf.replace_between_markers(text, "table")


def test_overrides():
  assert cf.parse_override("data.train_scenes=3000") == ("data.train_scenes", 3000)
  assert cf.parse_override("data.manifest=") == ("data.manifest", "")
  assert cf.parse_override("data.data_dir=/tmp/x") == ("data.data_dir", "/tmp/x")
  with pytest.raises(ValueError, match="key=value"):
    cf.parse_override("data.train_scenes")
