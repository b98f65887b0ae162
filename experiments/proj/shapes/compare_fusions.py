r"""Trains every fusion family on the same data and step budget and tables the results.

  python experiments/proj/shapes/compare_fusions.py --workdir=workdirs/fusions --steps=300 \
      --set=data.shapes.train_scenes=3000 --set=data.shapes.test_scenes=300 --readme=README.md
  python experiments/proj/shapes/compare_fusions.py ... --tasks=vqa,speech_vqa,av_matching   # + the audio tasks

Rows: the fusion families (FAMILY_CONFIGS) and a contrastive row (experiments/configs/contrastive.py,
config.model.kind='contrastive'; --families picks among them, --sizes=tiny for a smoke run). Each
row trains in WORKDIR/<family> from its config, with --steps, --batch_size and every --set
key=value applied to all runs alike. Before anything trains, the configs are compared: between the
families only the keys in FAMILY_KEYS (the fusion section and what it needs of the decoder) may
differ; the contrastive row may differ from them only in CONTRASTIVE_KEYS (its own model, and the
batch size of its embedding evaluation); any other difference (data, seed, optimizer, schedule,
budget, evaluation cadence) is an error. The contrastive row is scored by test retrieval
recall@1/5/10 (both directions) and zero-shot accuracy, the families by VQA and CIDEr-D; each gets
"–" in the other's columns.

--tasks (default vqa; vqa is always part of the table) adds the audio tasks: each (task, family)
pair is its own run in WORKDIR/<task>/<family> (the vqa runs stay in WORKDIR/<family>). A task's
config is its config file's changes to the config it builds on (TASK_CONFIGS, both built on
TASK_BASE_FAMILY's config) applied to each family's config, then the same --steps/--batch_size/--set
(checked for drift per task as above, plus TASK_FAMILY_KEYS). The audio encoder's padding:
a family that cannot mask padded audio (mmjax.models.vlm.check_fusion_media) runs with
model.audio.mask_padding=False when every clip of the task's data fills the
data.max_audio_seconds window (object sounds: nothing is padded, so reading the whole window is
right; a prefix family's decoder.max_len grows by the audio tokens in its prefix), else it gets
"–" with a note saying why (spoken questions are shorter than the window). The task columns are the
trainer's test/vqa_accuracy (speech_vqa) and test/av_match_accuracy (av_matching).

A re-run on the same --workdir reuses finished runs and resumes unfinished ones; a workdir
trained with another config is an error. Every number in the table is read back from the runs'
metrics.jsonl files: the trainer's train/steps_per_second and test metrics, and one
`compare/*` row this script appends after a run finishes (wall time, parameter count of the
trained parameters). --readme rewrites the text between the two marker lines of README_BEGIN /
README_END; --table also writes the table to a file.
"""

from __future__ import annotations

import ast
import datetime
import math
import os
import shlex
import statistics
import time

from absl import app, flags, logging

from mmjax import cli

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")

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

# The contrastive row: a CLIP / SigLIP model on the vqa task's data (its captioning examples).
# contrastive.py:tiny is the tiny model with tiny.py's data, batch and schedule.
CONTRASTIVE = "contrastive"
CONTRASTIVE_CONFIGS = {"default": ("contrastive.py", "default"), "tiny": ("contrastive.py", "tiny")}
# The only keys in which its config may differ from the families': its model (two towers, no fusion
# or decoder) and the batch size of its evaluation (embeddings instead of generation; no effect on
# the scores). Data, seed, optimizer, schedule, budget and evaluation cadence must be the same.
CONTRASTIVE_KEYS = ("model", "eval_batch_size")

# Audio tasks: --sizes -> (config file, argument), as for the families. Both files build on
# TASK_BASE_FAMILY's config (speech_vqa.py on fusion_flamingo.py, av_matching.py on speech_vqa.py):
# what they change in it is applied to every family's config.
TASKS = ("vqa", "speech_vqa", "av_matching")
TASK_CONFIGS = {
  "speech_vqa": {"default": ("speech_vqa.py", "default"), "tiny": ("speech_vqa.py", None)},
  "av_matching": {"default": ("av_matching.py", "default"), "tiny": ("av_matching.py", None)},
}
TASK_BASE_FAMILY = "flamingo"
# What may also differ between the families of an audio task (see fit_audio).
TASK_FAMILY_KEYS = ("model.audio.mask_padding",)
# The task's table column: (trainer metric, column title, name in the notes under the table).
TASK_COLUMNS = {
  "speech_vqa": ("test/vqa_accuracy", "test speech-VQA accuracy", "VQA from spoken questions"),
  "av_matching": ("test/av_match_accuracy", "test AV-matching accuracy", "Audio-visual matching"),
}

README_BEGIN = "<!-- fusion-comparison:begin -->"
README_END = "<!-- fusion-comparison:end -->"
TEST_METRICS = (
  "test/vqa_accuracy",
  "test/vqa_accuracy_attribute",
  "test/vqa_accuracy_spatial",
  "test/vqa_accuracy_relational",
  "test/cider",
)
CONTRASTIVE_METRICS = tuple(f"test/retrieval_{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)) + (
  "test/zero_shot_accuracy",
)
WALL, CPU, LOAD, PARAMS = "compare/wall_seconds", "compare/cpu_seconds", "compare/load_average", "compare/parameters"

_WORKDIR = flags.DEFINE_string("workdir", None, "Parent directory: one sub-workdir per run.", required=True)
_FAMILIES = flags.DEFINE_list(
  "families",
  None,
  "Rows to train: fusion families and/or contrastive (default: every "
  f"registered family that has a config, then contrastive: {','.join(FAMILY_CONFIGS)},"
  f"{CONTRASTIVE}).",
)
_TASKS = flags.DEFINE_list(
  "tasks",
  ["vqa"],
  "Tasks every fusion family trains on, one run each; from "
  f"{','.join(TASKS)} (vqa always included: the table's cost columns and the contrastive row "
  "are its runs).",
)
_SIZES = flags.DEFINE_enum(
  "sizes",
  "default",
  ["default", "tiny"],
  "The configs at the default sizes (the README main job's) or tiny (tests, smoke runs).",
)
_STEPS = flags.DEFINE_integer("steps", 0, "total_steps of every run (0 = the configs' own).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "batch_size of every run (0 = the configs' own).")
_SET = flags.DEFINE_multi_string(
  "set",
  [],
  "key=value config override applied to every run, e.g. "
  "--set=data.shapes.train_scenes=3000 (values are Python literals, else strings).",
)
_README = flags.DEFINE_string(
  "readme", "", "Markdown file whose text between the fusion-comparison markers is replaced by the table."
)
_TABLE = flags.DEFINE_string("table", "", "Also write the markdown table to this file.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show the trainer's progress bars.")


def parse_override(item: str) -> tuple[str, object]:
  """'data.shapes.train_scenes=3000' -> ('data.shapes.train_scenes', 3000); a value that is no Python literal is
  a string."""
  key, sep, raw = item.partition("=")
  if not sep or not key:
    raise ValueError(f"--set={item!r} is not of the form key=value.")
  try:
    value = ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    value = raw
  return key.strip(), value


def _load(entry):
  from mmjax import config_files

  path, arg = entry
  return config_files.load(os.path.join(_CONFIGS, path), arg)


def _budget(c, steps=0, batch_size=0, overrides=()):
  """Applies the shared --set overrides, --steps and --batch_size to config `c` (in place)."""
  from mmjax import config_files

  # Every family trains on the same examples, one question per image: most families cannot share
  # an image between questions (data.questions_per_image), so the main job's setting is not theirs.
  c.data.questions_per_image = 1
  c.data.captions_with_questions = False
  for key, value in overrides:
    config_files.apply_overrides(c, {key: value})
  if steps:
    c.total_steps = steps
  if batch_size:
    c.batch_size = batch_size
  return c


def task_delta(task: str, sizes: str = "default") -> dict:
  """What the task's config file changes in TASK_BASE_FAMILY's config at the same sizes: flat key ->
  value (new sections, e.g. model.audio, key by key). A task that drops keys or touches the fusion
  (FAMILY_KEYS) cannot be carried over to the other families: an error."""
  task_c = _flat(_load(TASK_CONFIGS[task][sizes]).to_dict())
  base = _flat(_load(FAMILY_CONFIGS[TASK_BASE_FAMILY][sizes]).to_dict())
  dropped = sorted(set(base) - set(task_c))
  if dropped:
    raise ValueError(
      f"{TASK_CONFIGS[task][sizes][0]} removes {dropped} from its base config; its changes cannot "
      "be applied to the other families."
    )
  delta = {k: v for k, v in task_c.items() if k not in base or base[k] != v}
  fusion = sorted(k for k in delta if _is_under(k, FAMILY_KEYS))
  if fusion:
    raise ValueError(
      f"{TASK_CONFIGS[task][sizes][0]} changes {fusion}, which differ per family; its changes cannot "
      "be applied to the other families."
    )
  return delta


def _set_path(c, key: str, value) -> None:
  """Sets dotted `key` of ConfigDict `c`, creating the sections it is missing (a task's model.audio)."""
  import ml_collections

  *parents, leaf = key.split(".")
  for p in parents:
    if c.get(p) is None:
      c[p] = ml_collections.ConfigDict()
    c = c[p]
  c[leaf] = value


def run_config(task: str, family: str, sizes="default", steps=0, batch_size=0, overrides=()):
  """The config of one run: the family's (or the contrastive row's) config, the task's changes for an
  audio task, then the shared budget and overrides."""
  if family == CONTRASTIVE:
    if task != "vqa":
      raise ValueError(f"the {CONTRASTIVE} row has no audio: it runs on the vqa task only, not {task!r}.")
    c = _load(CONTRASTIVE_CONFIGS[sizes])
    if c.model.kind != "contrastive":
      raise ValueError(f"{CONTRASTIVE_CONFIGS[sizes][0]} does not set model.kind='contrastive'.")
    return _budget(c, steps, batch_size, overrides)
  if family not in FAMILY_CONFIGS:
    raise ValueError(
      f"fusion family {family!r} has no config here; known: {sorted(FAMILY_CONFIGS)} and {CONTRASTIVE!r}."
    )
  path, _ = FAMILY_CONFIGS[family][sizes]
  c = _load(FAMILY_CONFIGS[family][sizes])
  if c.model.fusion.name != family:
    raise ValueError(f"{path} configures fusion {c.model.fusion.name!r}, not {family!r}.")
  if task != "vqa":
    for key, value in task_delta(task, sizes).items():
      _set_path(c, key, value)
  return _budget(c, steps, batch_size, overrides)


def family_configs(families, sizes="default", steps=0, batch_size=0, overrides=(), task="vqa") -> dict:
  """family -> its config for `task`, with the shared budget and overrides applied; checks that they
  agree."""
  configs = {f: run_config(task, f, sizes, steps, batch_size, overrides) for f in families}
  check_same_setup(configs, task)
  return configs


def comparison_configs(families, tasks=("vqa",), sizes="default", steps=0, batch_size=0, overrides=()) -> dict:
  """task -> family -> config of every run (the contrastive row under vqa only), checked for drift."""
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f"--tasks: unknown {unknown}; known: {','.join(TASKS)}.")
  if "vqa" not in tasks:
    raise ValueError(
      "--tasks must include vqa: the table's parameter, step-time and wall-time columns and the "
      f"{CONTRASTIVE} row are the vqa runs (finished runs are reused, so it costs nothing twice)."
    )
  generative = [f for f in families if f != CONTRASTIVE]
  out = {}
  for task in dict.fromkeys(["vqa"] + list(tasks)):
    rows = generative + ([CONTRASTIVE] if task == "vqa" and CONTRASTIVE in families else [])
    if rows:
      out[task] = family_configs(rows, sizes, steps, batch_size, overrides, task)
  return out


def _flat(d: dict, prefix: str = "") -> dict:
  """Flat key -> value; a None block (an optional encoder that is off, model.audio) has no keys."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if v is not None:
      out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
  return out


def _is_under(key: str, sections) -> bool:
  return any(key == f or key.startswith(f + ".") for f in sections)


def _shared_part(config, free=FAMILY_KEYS) -> dict:
  return {k: v for k, v in _flat(config.to_dict()).items() if not _is_under(k, free)}


def _diffs(first, ref: dict, family, flat: dict) -> list[str]:
  return [
    f"{key}: {first} {ref.get(key, '<missing>')!r} vs {family} {flat.get(key, '<missing>')!r}"
    for key in sorted(set(ref) | set(flat))
    if ref.get(key, "<missing>") != flat.get(key, "<missing>")
  ]


def check_same_setup(configs: dict, task: str = "vqa") -> None:
  """Raises when two families' configs differ outside FAMILY_KEYS (data, seed, budget, eval, ...);
  the contrastive row is compared with the first family outside CONTRASTIVE_KEYS."""
  free = FAMILY_KEYS + (TASK_FAMILY_KEYS if task != "vqa" else ())
  families = [f for f in configs if f != CONTRASTIVE]
  where = "" if task == "vqa" else f"{task}: "
  if len(families) > 1:
    (first, ref), *others = [(f, _shared_part(configs[f], free)) for f in families]
    diffs = [d for family, flat in others for d in _diffs(first, ref, family, flat)]
    if diffs:
      raise ValueError(
        f"{where}the families' configs differ outside the fusion (only {', '.join(free)} may): " + "; ".join(diffs[:10])
      )
  if CONTRASTIVE in configs and families:
    first = families[0]
    diffs = _diffs(
      first,
      _shared_part(configs[first], CONTRASTIVE_KEYS),
      CONTRASTIVE,
      _shared_part(configs[CONTRASTIVE], CONTRASTIVE_KEYS),
    )
    if diffs:
      raise ValueError(
        f"the {CONTRASTIVE} config differs from the families' outside its model (only "
        f"{', '.join(CONTRASTIVE_KEYS)} may): " + "; ".join(diffs[:10])
      )


def _clips_fill_window(config) -> bool:
  """Whether every example of every split of the (prepared) data of `config` has audio_len equal to
  the data.max_audio_seconds window, i.e. no clip is padded."""
  from mmjax.data import config as data_config, pipeline
  from mmjax.data.examples import SPLITS

  data = pipeline.Data(config)
  window = data_config.max_audio_samples(config.data)
  for split in SPLITS:
    sd = data.split(split)
    if any(int(sd.example(i)["audio_len"]) < window for i in range(len(sd))):
      return False
  return True


def _prefix_positions(config) -> int:
  """Decoder positions the conditioning prefix of `config`'s model takes (0: no prefix); shapes only."""
  import jax

  from mmjax.models import build_model, vlm
  from mmjax.train import batches as batches_lib

  model = build_model(config.model, int(config.data.vocab_size))
  b = batches_lib.dummy_batch(config, 1)
  cond, _ = jax.eval_shape(
    lambda: model.init_with_output(
      jax.random.key(0), b["image"], b["prompt"], b["prompt_len"], method="encode", **vlm.media_inputs(config.model, b)
    )
  )
  return 0 if cond.prefix is None else int(cond.prefix.shape[1])


def fit_audio(configs: dict) -> dict:
  """Makes every audio task's runs valid or drops them (configs: comparison_configs, changed in place).

  A family that cannot mask padded audio (check_fusion_media) runs with model.audio.mask_padding=False
  when every clip of the task's data fills the window (needs the data prepared), else it is dropped.
  A family whose decoder prefix holds the audio tokens gets the decoder positions for them.
  Returns task -> {"skipped": {family: check_fusion_media's error}, "unmasked": [families run with
  mask_padding=False], "max_len": {family: (old, new) model.decoder.max_len}, "fills": whether the
  clips fill the window (None: not needed), "window_seconds": data.max_audio_seconds}.
  """
  from mmjax.models import vlm

  notes = {}
  for task, runs in configs.items():
    if task == "vqa":
      continue
    note = notes[task] = {
      "skipped": {},
      "unmasked": [],
      "max_len": {},
      "fills": None,
      "window_seconds": float(next(iter(runs.values())).data.max_audio_seconds),
    }
    for family, c in list(runs.items()):
      try:
        vlm.check_fusion_media(c.model)
        continue
      except ValueError as e:
        why = str(e)
      if note["fills"] is None:
        note["fills"] = _clips_fill_window(c)
      if note["fills"]:
        c.model.audio.mask_padding = False
        note["unmasked"].append(family)
      else:
        del runs[family]
        note["skipped"][family] = why
    for family, c in runs.items():
      needed = _prefix_positions(c) + int(c.data.max_target_len)
      if needed > c.model.decoder.max_len:
        note["max_len"][family] = (int(c.model.decoder.max_len), needed)
        c.model.decoder.max_len = needed
    check_same_setup(runs, task)
  for task in [t for t, runs in configs.items() if not runs]:
    del configs[task]
  return notes


def run_workdir(root: str, task: str, family: str) -> str:
  """WORKDIR/<family> for vqa (as before tasks existed, so those workdirs resume), else WORKDIR/<task>/<family>."""
  return os.path.join(root, family) if task == "vqa" else os.path.join(root, task, family)


def _check_workdir_config(config, workdir: str) -> None:
  """A workdir trained under another config (e.g. another --steps) is not silently reused."""
  import json

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = _flat(json.load(f))
  now = _flat(json.loads(config.to_json_best_effort()))
  diffs = [
    f"{k}: {saved.get(k)!r} there vs {now.get(k)!r} now"
    for k in sorted(set(saved) | set(now))
    if saved.get(k) != now.get(k)
  ]
  if diffs:
    raise ValueError(
      f"{workdir} was trained with another config ({'; '.join(diffs[:5])}); use another --workdir or delete it."
    )


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


def read_run(workdir: str, total_steps: int, metrics=TEST_METRICS) -> dict:
  """The table's numbers for one run, all from WORKDIR/metrics.jsonl (a metric the run did not
  write, e.g. zero-shot accuracy on a manifest, is None)."""
  rows = _rows(workdir)
  final = [r for r in rows if r["step"] == total_steps]
  test = [r for r in final if metrics[0] in r]
  counted = [r for r in final if PARAMS in r]
  if not test or not counted:
    raise ValueError(f"{workdir}/metrics.jsonl holds no finished run of {total_steps} steps.")
  # One rate per logged interval (the last write of a step wins after a resume); the first
  # interval includes compilation, so it is left out.
  rates = {r["step"]: r["train/steps_per_second"] for r in rows if "train/steps_per_second" in r}
  rates = [rates[s] for s in sorted(rates)][1:]
  return {
    "parameters": counted[-1][PARAMS],
    "step_ms": statistics.median(1000.0 / r for r in rates) if rates else float("nan"),
    "wall_seconds": sum(r[WALL] for r in rows if WALL in r),
    "cpu_seconds": sum(r[CPU] for r in rows if CPU in r),
    "load_average": counted[-1][LOAD],
    **{k: test[-1].get(k) for k in metrics},
  }


def run_metrics(task: str, family: str) -> tuple[str, ...]:
  """The test metrics of a run that the table reads (the first one marks the final test row)."""
  if family == CONTRASTIVE:
    return CONTRASTIVE_METRICS
  return TEST_METRICS if task == "vqa" else (TASK_COLUMNS[task][0],)


def _count(n: float) -> str:
  return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _duration(s: float) -> str:
  return f"{int(s // 60)} min {int(round(s % 60)):02d} s" if s >= 60 else f"{s:.1f} s"


def _ms(x: float) -> str:
  """A step time; – when no interval after the first (compilation) was logged (raise log_every's rate)."""
  return f"{x:.1f}" if math.isfinite(x) else "–"


def _num(x, fmt: str = ".3f") -> str:
  return "–" if x is None else format(x, fmt)


def _and(names) -> str:
  names = list(names)
  return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def markdown(results: dict, configs: dict, command: str, date: str, machine: str, tasks=(), notes=None) -> str:
  """The README table. results / configs: task -> row -> read_run / config (rows: the vqa runs);
  tasks: the audio tasks asked for (a column each); notes: fit_audio's."""
  notes = notes or {}
  vqa = results["vqa"]
  contrastive = CONTRASTIVE in vqa
  header = [
    "family",
    "parameters",
    "train step (ms)",
    "test VQA all",
    "attribute",
    "spatial",
    "relational",
    "test CIDEr-D",
  ]
  header += ["test i2t R@1/5/10", "test t2i R@1/5/10", "zero-shot accuracy"] if contrastive else []
  header += [TASK_COLUMNS[t][1] for t in tasks] + ["wall time"]
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  for family, r in vqa.items():
    cells = [family, _count(r["parameters"]), _ms(r["step_ms"])]
    if family == CONTRASTIVE:
      recall = lambda d: " / ".join(_num(r[f"test/retrieval_{d}_r{k}"]) for k in (1, 5, 10))
      cells += ["–"] * 5 + [recall("i2t"), recall("t2i"), _num(r["test/zero_shot_accuracy"])]
    else:
      cells += [_num(r[k]) for k in TEST_METRICS[:4]] + [_num(r["test/cider"], ".2f")]
      cells += ["–"] * 3 if contrastive else []
    for t in tasks:
      note = notes.get(t, {})
      if family in results.get(t, {}):
        cells.append(_num(results[t][family][TASK_COLUMNS[t][0]]) + ("†" if family in note.get("unmasked", ()) else ""))
      else:
        cells.append("–*" if family in note.get("skipped", {}) else "–")
    cells.append(_duration(r["wall_seconds"]))
    lines.append("| " + " | ".join(cells) + " |")

  c = configs["vqa"][next(iter(vqa))]
  cpu = ", ".join(f"{_duration(r['cpu_seconds'])}" for r in vqa.values())
  load = ", ".join(f"{r['load_average']:.1f}" for r in vqa.values())
  text = [
    f"Train step time: median over the logged intervals (every {c.log_every} steps) after the first, "
    "which includes compilation. Wall time: training plus the final test evaluation (the dataset is "
    "prepared before the first run). Parameters: counted from each run's trained parameters. "
    f"CPU time of the process per row: {cpu}; 5-minute load average at the end of each: {load} "
    f"(a load above the {os.cpu_count()} cores means that threads, this run's included, waited for a core, "
    "which inflates the times)."
  ]
  if contrastive:
    cc = configs["vqa"][CONTRASTIVE]
    text.append(
      f"Contrastive row: `experiments/configs/contrastive.py` ({cc.model.loss} loss) on the same "
      f"data, seed, optimizer, schedule and budget; its config may differ from the families' only in "
      f"{_and(f'`{k}`' for k in CONTRASTIVE_KEYS)}. It trains on the captioning examples alone and generates "
      "nothing: its columns are test image-to-text and text-to-image retrieval recall@1/5/10 over the split's "
      "captions and zero-shot shape accuracy (`test/retrieval_{i2t,t2i}_r{1,5,10}`, `test/zero_shot_accuracy`), "
      "and it has – in the generative columns, as the families have in its columns."
    )
  for t in tasks:
    note = notes.get(t, {})
    part = [
      f"{TASK_COLUMNS[t][2]} (`--tasks={t}`): what `experiments/configs/"
      f"{TASK_CONFIGS[t]['default'][0]}` changes in the {TASK_BASE_FAMILY} config, applied to every family "
      f"(runs in WORKDIR/{t}/<family>); the column is the trainer's `{TASK_COLUMNS[t][0]}`."
    ]
    window = note.get("window_seconds")
    if note.get("unmasked"):
      grown = "".join(
        f" ({f}'s `model.decoder.max_len` {a} -> {b}: its prefix holds the audio tokens)"
        for f, (a, b) in note.get("max_len", {}).items()
      )
      they = "they" if len(note["unmasked"]) > 1 else "it"
      part.append(
        f"† {_and(note['unmasked'])} cannot mask padded audio, so {they} ran with "
        f"`model.audio.mask_padding=False`: every clip of this task fills the {window:g} s "
        f"`data.max_audio_seconds` window, so none is padded{grown}."
      )
    if note.get("skipped"):
      they = "They" if len(note["skipped"]) > 1 else "It"
      part.append(
        f"–* {_and(note['skipped'])}: not run. {they} cannot mask padded audio "
        "(`mmjax.models.vlm.check_fusion_media`), and this task's clips are shorter than the "
        f"{window:g} s `data.max_audio_seconds` window, so with `model.audio.mask_padding=False` "
        f"{they.lower()} would take each clip's padding for part of it."
      )
    if results.get(t):
      part.append(
        "Parameters / train step / wall time: "
        + ", ".join(
          f"{f} {_count(r['parameters'])} / {_ms(r['step_ms'])} ms / {_duration(r['wall_seconds'])}"
          for f, r in results[t].items()
        )
        + "."
      )
    text.append(" ".join(part))

  all_configs = [cfg for runs in configs.values() for cfg in runs.values()]
  budgets = {(cfg.total_steps, cfg.batch_size) for cfg in all_configs}
  if len(budgets) == 1:
    steps, batch = budgets.pop()
    budget = f"{steps} steps of batch {batch} for every run"
  else:
    first = {t: next(iter(runs.values())) for t, runs in configs.items()}
    budget = "; ".join(f"{t}: {c.total_steps} steps of batch {c.batch_size}" for t, c in first.items())
    budget += ", for every run of a task"
  scenes = {
    t: "{}/{}/{}".format(
      *(next(iter(runs.values())).data.shapes[k] for k in ("train_scenes", "validation_scenes", "test_scenes"))
    )
    for t, runs in configs.items()
  }
  data = (
    f"shapes scenes train/validation/test {scenes['vqa']}"
    if len(set(scenes.values())) == 1
    else "shapes scenes train/validation/test " + ", ".join(f"{t} {n}" for t, n in scenes.items())
  )
  return "\n".join(
    lines
    + [""]
    + [p for t in text for p in (t, "")]
    + [
      f"Produced by `{command}` on {date}, {machine}: {budget} (same data, seed, schedule and evaluation within a "
      f"task; {data}).",
    ]
  )


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
  names = ("workdir", "families", "tasks", "sizes", "steps", "batch_size", "set", "readme", "table", "progress")
  args = [line for name in names if flags.FLAGS[name].present for line in flags.FLAGS[name].serialize().splitlines()]
  return shlex.join(["python", "experiments/proj/shapes/compare_fusions.py", *args])


def _machine() -> str:
  import jax

  return (
    f"{os.cpu_count()} CPU cores, jax {jax.__version__} on {jax.default_backend()} "
    f"({jax.device_count()} x {jax.devices()[0].device_kind})"
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  from mmjax.data import prepare

  families = _FAMILIES.value or list(FAMILY_CONFIGS) + [CONTRASTIVE]
  tasks = list(dict.fromkeys(_TASKS.value))
  overrides = [parse_override(s) for s in _SET.value]
  configs = comparison_configs(families, tasks, _SIZES.value, _STEPS.value, _BATCH.value, overrides)
  for runs in configs.values():  # the same data for all runs of a task: built once, outside the timings
    prepare.prepare(next(iter(runs.values())))
  notes = fit_audio(configs)
  for task, note in notes.items():
    for family, why in note["skipped"].items():
      print(f"{task}/{family}: not run (–* in the table): {why}")
  runs = [(t, f) for t, by_family in configs.items() for f in by_family]
  workdirs = {(t, f): run_workdir(_WORKDIR.value, t, f) for t, f in runs}
  for t, f in runs:
    _check_workdir_config(configs[t][f], workdirs[t, f])
  for t, f in runs:
    config, name = configs[t][f], f if t == "vqa" else f"{t}/{f}"
    if _finished(workdirs[t, f], config.total_steps):
      print(f"{name}: finished in {workdirs[t, f]}, reused.")
      continue
    print(f"{name}: training {config.total_steps} steps in {workdirs[t, f]}")
    if not train_family(config, workdirs[t, f], _PROGRESS.value):
      print(f"{name}: stopped on request; run the same command again to resume.")
      return
  results = {
    t: {f: read_run(workdirs[t, f], configs[t][f].total_steps, run_metrics(t, f)) for f in by_family}
    for t, by_family in configs.items()
  }
  table = markdown(
    results,
    configs,
    _command(),
    datetime.date.today().isoformat(),
    _machine(),
    tasks=[t for t in tasks if t != "vqa"],
    notes=notes,
  )
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
  cli.run(main)
