r"""Trains every fusion family on the same data and step budget and tables the results.

  python experiments/compare_fusions.py --workdir=workdirs/fusions --steps=300 \
      --set=data.train_scenes=3000 --set=data.test_scenes=300 --readme=README.md

Each family trains in WORKDIR/<family> from its config (FAMILY_CONFIGS; --sizes=tiny for a smoke run), with
--steps, --batch_size and every --set key=value applied to all families alike. Before anything
trains, the configs are compared: only the keys in FAMILY_KEYS (the fusion section and what it
needs of the decoder) may differ between families; any other difference is an error.

A re-run on the same --workdir reuses finished families and resumes unfinished ones; a workdir
trained with another config is an error. Every number in the table is read back from the runs'
metrics.jsonl files: the trainer's train/steps_per_second and test metrics, and one
`compare/*` row this script appends after a family finishes (wall time, parameter count of the
trained parameters). --readme rewrites the text between the two marker lines of README_BEGIN /
README_END; --table also writes the table to a file.
"""
from __future__ import annotations

import ast
import datetime
import os
import shlex
import statistics
import time

from absl import app, flags, logging

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

# family -> --sizes -> (config file in experiments/configs, its argument). cross_attention is the
# default config (tiny.py its tiny variant); the other families' files take "default" for those sizes.
FAMILY_CONFIGS = {
    "cross_attention": {"default": ("default.py", None), "tiny": ("tiny.py", None)},
    "prefix_lm": {"default": ("fusion_prefix_lm.py", "default"), "tiny": ("fusion_prefix_lm.py", None)},
    "flamingo": {"default": ("fusion_flamingo.py", "default"), "tiny": ("fusion_flamingo.py", None)},
    "qformer": {"default": ("fusion_qformer.py", "default"), "tiny": ("fusion_qformer.py", None)},
}
# The only keys (and sections) that may differ between families.
FAMILY_KEYS = ("model.fusion", "model.decoder.max_len")

README_BEGIN = "<!-- fusion-comparison:begin -->"
README_END = "<!-- fusion-comparison:end -->"
TEST_METRICS = ("test/vqa_accuracy", "test/vqa_accuracy_attribute", "test/vqa_accuracy_spatial",
                "test/vqa_accuracy_relational", "test/cider")
WALL, CPU, LOAD, PARAMS = "compare/wall_seconds", "compare/cpu_seconds", "compare/load_average", "compare/parameters"

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory: one sub-workdir per family.", required=True)
_FAMILIES = flags.DEFINE_list("families", None, "Fusion families to train (default: every registered family "
                              f"that has a config: {','.join(FAMILY_CONFIGS)}).")
_SIZES = flags.DEFINE_enum("sizes", "default", ["default", "tiny"], "The families' configs at the default "
                           "sizes (the README main job's) or tiny (tests, smoke runs).")
_STEPS = flags.DEFINE_integer("steps", 0, "total_steps of every family (0 = the configs' own).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "batch_size of every family (0 = the configs' own).")
_SET = flags.DEFINE_multi_string("set", [], "key=value config override applied to every family, e.g. "
                                 "--set=data.train_scenes=3000 (values are Python literals, else strings).")
_README = flags.DEFINE_string("readme", "", "Markdown file whose text between the fusion-comparison markers "
                              "is replaced by the table.")
_TABLE = flags.DEFINE_string("table", "", "Also write the markdown table to this file.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the trainer's progress bars.")


def parse_override(item: str) -> tuple[str, object]:
  """'data.train_scenes=3000' -> ('data.train_scenes', 3000); a value that is no Python literal is
  a string."""
  key, sep, raw = item.partition("=")
  if not sep or not key:
    raise ValueError(f"--set={item!r} is not of the form key=value.")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return key.strip(), value


def family_configs(families, sizes="default", steps=0, batch_size=0, overrides=()) -> dict:
  """family -> its config, with the shared budget and overrides applied; checks that they agree."""
  from mmjax import config_files
  from mmjax.fusion import FUSIONS
  configs = {}
  for family in families:
    if family not in FAMILY_CONFIGS:
      raise ValueError(f"fusion family {family!r} has no config here; known: {sorted(FAMILY_CONFIGS)}.")
    if family not in FUSIONS:
      raise ValueError(f"fusion family {family!r} is not registered; registered: {sorted(FUSIONS)}.")
    path, arg = FAMILY_CONFIGS[family][sizes]
    c = config_files.load(os.path.join(_CONFIGS, path), arg, dict(overrides))
    if steps:
      c.total_steps = steps
    if batch_size:
      c.batch_size = batch_size
    if c.model.fusion.name != family:
      raise ValueError(f"{path} configures fusion {c.model.fusion.name!r}, not {family!r}.")
    configs[family] = c
  check_same_setup(configs)
  return configs


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def _shared_part(config) -> dict:
  free = lambda k: any(k == f or k.startswith(f + ".") for f in FAMILY_KEYS)
  return {k: v for k, v in _flat(config.to_dict()).items() if not free(k)}


def check_same_setup(configs: dict) -> None:
  """Raises when two families' configs differ outside FAMILY_KEYS (data, seed, budget, eval, ...)."""
  (first, ref), *others = [(f, _shared_part(c)) for f, c in configs.items()]
  diffs = []
  for family, flat in others:
    for key in sorted(set(ref) | set(flat)):
      if ref.get(key, "<missing>") != flat.get(key, "<missing>"):
        diffs.append(f"{key}: {first} {ref.get(key, '<missing>')!r} vs {family} {flat.get(key, '<missing>')!r}")
  if diffs:
    raise ValueError("the families' configs differ outside the fusion (only "
                     f"{', '.join(FAMILY_KEYS)} may): " + "; ".join(diffs[:10]))


def _check_workdir_config(config, workdir: str) -> None:
  """A workdir trained under another config (e.g. another --steps) is not silently reused."""
  import json
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat(json.load(f))
  now = _flat(json.loads(config.to_json_best_effort()))
  diffs = [f"{k}: {saved.get(k)!r} there vs {now.get(k)!r} now"
           for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
  if diffs:
    raise ValueError(f"{workdir} was trained with another config ({'; '.join(diffs[:5])}); "
                     "use another --workdir or delete it.")


def _rows(workdir: str) -> list[dict]:
  from mmjax.train.metrics_writer import read_metrics
  return read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []


def _finished(workdir: str, total_steps: int) -> bool:
  return any(r["step"] == total_steps and PARAMS in r for r in _rows(workdir))


def train_family(config, workdir: str, progress: bool) -> bool:
  """Trains (or resumes) one family and appends its compare/* row; False when stopped early."""
  import jax
  import numpy as np
  from mmjax.train import workdir as workdir_lib
  from mmjax.train.metrics_writer import MetricWriter
  from mmjax.train.trainer import train_and_evaluate
  t0, cpu0 = time.time(), time.process_time()
  out = train_and_evaluate(config, workdir, progress=progress)
  # CPU seconds of this process (all threads) next to the wall time, and the machine's 5-minute
  # load average: on a shared machine they say how much of the wall time was waiting for a core.
  row = {WALL: time.time() - t0, CPU: time.process_time() - cpu0, LOAD: os.getloadavg()[1]}
  if "stopped_at" not in out:
    params = workdir_lib.load(workdir).params
    row[PARAMS] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  writer = MetricWriter(workdir)
  writer.write(out.get("stopped_at", config.total_steps), row)
  writer.close()
  return "stopped_at" not in out


def read_run(workdir: str, total_steps: int) -> dict:
  """The table's numbers for one family, all from WORKDIR/metrics.jsonl."""
  rows = _rows(workdir)
  final = [r for r in rows if r["step"] == total_steps]
  test = [r for r in final if TEST_METRICS[0] in r]
  counted = [r for r in final if PARAMS in r]
  if not test or not counted:
    raise ValueError(f"{workdir}/metrics.jsonl holds no finished run of {total_steps} steps.")
  # One rate per logged interval (the last write of a step wins after a resume); the first
  # interval includes compilation, so it is left out.
  rates = {r["step"]: r["train/steps_per_second"] for r in rows if "train/steps_per_second" in r}
  rates = [rates[s] for s in sorted(rates)][1:]
  return {"parameters": counted[-1][PARAMS],
          "step_ms": statistics.median(1000.0 / r for r in rates) if rates else float("nan"),
          "wall_seconds": sum(r[WALL] for r in rows if WALL in r),
          "cpu_seconds": sum(r[CPU] for r in rows if CPU in r),
          "load_average": counted[-1][LOAD],
          **{k: test[-1][k] for k in TEST_METRICS}}


def _count(n: float) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _duration(s: float) -> str:
  return f"{int(s // 60)} min {int(round(s % 60)):02d} s" if s >= 60 else f"{s:.1f} s"


def markdown(results: dict, configs: dict, command: str, date: str, machine: str) -> str:
  c = next(iter(configs.values()))
  lines = ["| family | parameters | train step (ms) | test VQA all | attribute | spatial | relational "
           "| test CIDEr-D | wall time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for family, r in results.items():
    vqa = " | ".join(f"{r[k]:.3f}" for k in TEST_METRICS[:4])
    lines.append(f"| {family} | {_count(r['parameters'])} | {r['step_ms']:.1f} | {vqa} | {r['test/cider']:.2f} "
                 f"| {_duration(r['wall_seconds'])} |")
  d = c.data
  cpu = ", ".join(f"{_duration(r['cpu_seconds'])}" for r in results.values())
  load = ", ".join(f"{r['load_average']:.1f}" for r in results.values())
  return "\n".join(lines + [
      "",
      f"Train step time: median over the logged intervals (every {c.log_every} steps) after the first, "
      "which includes compilation. Wall time: training plus the final test evaluation (the dataset is "
      "prepared before the first family). Parameters: counted from each run's trained parameters. "
      f"CPU time of the process per family: {cpu}; 5-minute load average at the end of each: {load} "
      f"(a load above the {os.cpu_count()} cores means that threads, this run's included, waited for a core, "
      "which inflates the times).",
      "",
      f"Produced by `{command}` on {date}, {machine}: {c.total_steps} steps of batch {c.batch_size} for every "
      f"family (same data, seed, schedule and evaluation; shapes scenes train/validation/test "
      f"{d.train_scenes}/{d.validation_scenes}/{d.test_scenes}).",
  ])


def replace_between_markers(text: str, body: str) -> str:
  """`text` with what lies between the README_BEGIN and README_END lines replaced by `body`."""
  if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
    raise ValueError(f"expected {README_BEGIN} and {README_END} once each.")
  head, rest = text.split(README_BEGIN)
  if README_END in head:
    raise ValueError(f"{README_END} comes before {README_BEGIN}.")
  _, tail = rest.split(README_END)
  return f"{head}{README_BEGIN}\n{body}\n{README_END}{tail}"


def _command() -> str:
  """The command line of this run, rebuilt from the flags given (whatever called main)."""
  names = ("workdir", "families", "sizes", "steps", "batch_size", "set", "readme", "table", "progress")
  args = [line for name in names if flags.FLAGS[name].present for line in flags.FLAGS[name].serialize().splitlines()]
  return shlex.join(["python", "experiments/compare_fusions.py", *args])


def _machine() -> str:
  import jax
  return f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()} " \
         f"({jax.device_count()} x {jax.devices()[0].device_kind})"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from mmjax.data import pipeline
  from mmjax.fusion import FUSIONS
  families = _FAMILIES.value or [f for f in FAMILY_CONFIGS if f in FUSIONS]
  overrides = [parse_override(s) for s in _SET.value]
  configs = family_configs(families, _SIZES.value, _STEPS.value, _BATCH.value, overrides)
  workdirs = {f: os.path.join(_WORKDIR.value, f) for f in families}
  for family, config in configs.items():
    _check_workdir_config(config, workdirs[family])
  pipeline.prepare(next(iter(configs.values())))  # the same data for all: built once, outside the timings
  for family, config in configs.items():
    if _finished(workdirs[family], config.total_steps):
      print(f"{family}: finished in {workdirs[family]}, reused.")
      continue
    print(f"{family}: training {config.total_steps} steps in {workdirs[family]}")
    if not train_family(config, workdirs[family], _PROGRESS.value):
      print(f"{family}: stopped on request; run the same command again to resume.")
      return
  results = {f: read_run(workdirs[f], configs[f].total_steps) for f in families}
  table = markdown(results, configs, _command(), datetime.date.today().isoformat(), _machine())
  print(table)
  if _TABLE.value:
    with open(_TABLE.value, "w", encoding="utf-8") as f:
      f.write(table + "\n")
  if _README.value:
    with open(_README.value, encoding="utf-8") as f:
      text = f.read()
    with open(_README.value, "w", encoding="utf-8") as f:
      f.write(replace_between_markers(text, table))


if __name__ == "__main__":
  app.run(main)
