"""experiments/proj/shapes/t2i_by_group.py on a tiny pixel-colour workdir: its groups partition the test
prompts (the held-out groups hold exactly the split's compositional scenes, t2i.compositional), the
groups' scene accuracies average to the whole split's, and its "all" row is the trainer's own test
metrics (same sampler, seed and batches)."""

import json
import os
import subprocess
import sys

from mmjax import config_files
from mmjax.train import trainer
from tests.conftest import CONFIGS, ROOT

SCRIPT = os.path.join(ROOT, "experiments", "proj", "shapes", "t2i_by_group.py")


def test_groups_partition_the_split_and_all_equals_the_trainer(shared_data_dir, tmp_path):
  c = config_files.load(os.path.join(CONFIGS, "t2i.py"), "tiny")
  c.data.data_dir = shared_data_dir
  wd = str(tmp_path / "run")
  trainer.train_and_evaluate(c, wd, progress=False)
  env = dict(os.environ, MMJAX_DATA_DIR=shared_data_dir)
  env.pop("XLA_FLAGS", None)
  r = subprocess.run(
    [sys.executable, SCRIPT, f"--workdir={wd}"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
  )
  assert r.returncode == 0, r.stderr[-2000:]
  rows = {}
  for line in r.stdout.splitlines():
    cells = [x.strip() for x in line.strip().strip("|").split("|")]
    if line.startswith("| ") and cells[1].isdigit():
      scores = [[None if v == "-" else float(v) for v in x.split(" / ")] for x in cells[2:]]
      rows[cells[0]] = (int(cells[1]), scores)
  n = rows.pop("all")
  fraction = float(c.data.shapes.t2i.test_held_out_fraction)
  assert sum(k for k, _ in rows.values()) == n[0] > 0
  assert sum(k for name, (k, _) in rows.items() if name.startswith("held-out")) == int(n[0] * fraction) > 0
  kinds = ("seen", "held-out pair", "held-out relation")
  assert set(rows) <= {f"{g}, {m}" for g in kinds for m in ("1 object", "2 objects")}
  for side in (0, 1):  # guided, unguided: each prompt's exact scene counted in one group
    assert abs(sum(k * s[1][side] for k, s in rows.values()) - n[0] * n[1][1][side]) < 1e-3 * len(rows)
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    last = [json.loads(x) for x in f if "test/t2i_scene_accuracy" in x][-1]
  for (g, u), name in zip(n[1], ("object", "scene", "relation")):
    key = f"test/t2i_{name}_accuracy"
    if key in last:
      assert abs(g - last[key]) < 6e-4 and abs(u - last[key + "_noguidance"]) < 6e-4
