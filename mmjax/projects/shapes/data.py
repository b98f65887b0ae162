"""The embedded shapes data as a dataset source: its TFDS builder, its config block and its hooks.

  config.data.source = "mmjax.projects.shapes.data:SOURCE"
  config.data.shapes = data_config()       # num_shapes, split sizes, questions per type, ...

The builder (``mmjax_shapes``) names each config by every parameter, so each parameter set lives in
its own versioned directory ``<data_dir>/mmjax_shapes/<config name>/<version>``. Splits use
independent seeds (``scenes.scene_seed``) and the build asserts that no scene layout (hence image)
repeats across splits. Optional media: spoken questions (mmjax.data.speech), object sounds
(sounds.py) and clips of the objects moving (video.py). Optional grounding questions (refer, detect,
grounded_caption, grounded_vqa; scenes.py) train and score the library's grounding tasks.
The text-to-image variant (``config.data.shapes.t2i.enabled``; t2i.py) replaces the scenes by 1 to
``max_objects`` objects whose captions state a relation, with held-out combinations in the test split
alone; its records hold the image and its caption (the prompt), no questions.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from mmjax.data import config as data_config_lib, tfds_builders
from mmjax.data.source import DatasetSource
from mmjax.data.tasks import GROUNDING_TASKS
from mmjax.data.tfds_builders import RecordConfig, media_suffix
from mmjax.projects.shapes import scenes as shapes, sounds, t2i as t2i_lib, video as video_lib


def default_data_config() -> ml_collections.ConfigDict:
  """The library's `config.data` with this dataset as its source and its `shapes` block."""
  c = data_config_lib.default_data_config()
  c.source = "mmjax.projects.shapes.data:SOURCE"
  c.shapes = data_config()
  return c


def data_config() -> ml_collections.ConfigDict:
  """The `config.data.shapes` block (defaults of the README main job's data).

  num_shapes         3      shape kinds (2: circle, square; 3: + triangle).
  train_scenes       12000  scenes per split ...
  validation_scenes  500
  test_scenes        1000
  questions_per_type {attribute: 2, spatial: 2, relational: 4}  questions per scene.
  train_auxiliary_questions {side: 0, spatial_lean: 0, count: 0, position: 0}: training-only
                     questions per train scene (never in validation/test, never scored; see
                     scenes.AUXILIARY_KINDS for what they are and why).
  grounding_per_type {refer: 0, detect: 0, grounded_caption: 0, grounded_vqa: 0}: grounding
                     questions per scene, in every split (they are scored), after all others; their
                     answers hold boxes, so they need config.data.location_bins > 0 (e.g. 64), and a
                     grounded caption is about 85 tokens (vocab_size 512): raise
                     config.data.max_target_len to 128 to keep it whole.
                     grounded_caption has one prompt, so a count above 1 still asks it once.
  object_sounds      False  also store a 1 s clip per scene in which each object plays a tone
                     (pitch from colour, timbre from shape, left to right; sounds.py).
  t2i                {enabled: False, max_objects: 3, relations: t2i.RELATIONS, held_out_pairs: 2,
                     held_out_relations: 20, test_held_out_fraction: 0.5}: with enabled, the
                     text-to-image scenes of t2i.py instead (1 to max_objects objects, a relation from
                     `relations` between two of them; that many (colour, shape) pairs and relational
                     facts, drawn from config.data.seed, never in train or validation captions, and
                     shown by that fraction of the test scenes). Records then hold the image and its
                     caption only: questions_per_type is not used (its templates presume one object of
                     every colour), and training-only questions, grounding, object sounds, video and
                     spoken questions are errors.
  """
  return ml_collections.ConfigDict(
    dict(
      num_shapes=3,
      train_scenes=12000,
      validation_scenes=500,
      test_scenes=1000,
      questions_per_type=dict(shapes.DEFAULT_QUESTIONS_PER_TYPE),
      train_auxiliary_questions={k: 0 for k in shapes.AUXILIARY_KINDS},
      grounding_per_type={k: 0 for k in GROUNDING_TASKS},
      object_sounds=False,
      t2i=dict(
        enabled=False,
        max_objects=3,
        relations=t2i_lib.RELATIONS,
        held_out_pairs=2,
        held_out_relations=20,
        test_held_out_fraction=0.5,
      ),
    )
  )


@dataclasses.dataclass(eq=False)
class ShapesConfig(RecordConfig):
  num_shapes: int = 3
  train_scenes: int = 12000
  validation_scenes: int = 500
  test_scenes: int = 1000
  attribute_questions: int = 2
  spatial_questions: int = 2
  relational_questions: int = 4
  # Training-only questions per train scene (shapes.AUXILIARY_KINDS); validation/test have none.
  side_questions: int = 0
  spatial_lean_questions: int = 0
  count_questions: int = 0
  position_questions: int = 0
  # Grounding questions per scene, every split (GROUNDING_TASKS).
  refer_questions: int = 0
  detect_questions: int = 0
  grounded_caption_questions: int = 0
  grounded_vqa_questions: int = 0
  object_sounds: bool = False
  # The text-to-image variant (t2i.T2IOptions; t2i_max_objects 0: off).
  t2i_max_objects: int = 0
  t2i_relations: tuple[str, ...] = ()
  t2i_held_out_pairs: int = 0
  t2i_held_out_relations: int = 0
  t2i_test_held_out_fraction: float = 0.0

  @property
  def t2i(self) -> t2i_lib.T2IOptions | None:
    if not self.t2i_max_objects:
      return None
    return t2i_lib.T2IOptions(
      self.t2i_max_objects,
      self.t2i_relations,
      self.t2i_held_out_pairs,
      self.t2i_held_out_relations,
      self.t2i_test_held_out_fraction,
    )

  @property
  def scene_audio(self) -> bool:
    return self.object_sounds

  @property
  def question_types(self) -> tuple[str, ...]:
    # The training-only kinds come after the scored ones: evaluations report those first. The
    # grounding tasks come last, so that the other kinds keep their qtype indices.
    return shapes.QUESTION_KINDS + shapes.AUXILIARY_KINDS + GROUNDING_TASKS

  @property
  def questions_per_type(self):
    return {
      "attribute": self.attribute_questions,
      "spatial": self.spatial_questions,
      "relational": self.relational_questions,
    }

  @property
  def auxiliary_per_type(self):
    return {k: getattr(self, f"{k}_questions") for k in shapes.AUXILIARY_KINDS}

  @property
  def grounding_per_type(self):
    return {k: getattr(self, f"{k}_questions") for k in GROUNDING_TASKS}

  @property
  def grounding(self) -> bool:
    return any(self.grounding_per_type.values())

  @property
  def split_sizes(self):
    return {"train": self.train_scenes, "validation": self.validation_scenes, "test": self.test_scenes}


def _counts(given, kinds: tuple[str, ...], key: str) -> dict[str, int]:
  """{kind: count} for every one of ``kinds`` from ``given`` (kinds left out: 0); errors name ``key``."""
  out = {k: 0 for k in kinds}
  if given is None:
    return out
  given = dict(given)
  unknown = set(given) - set(kinds)
  if unknown:
    raise ValueError(f"{key}: unknown question types {sorted(unknown)}; expected some of {kinds}.")
  for k, v in given.items():
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
      raise ValueError(f"{key}: counts must be integers >= 0, got {k}={v!r}.")
    out[k] = int(v)
  return out


def shapes_config(
  image_size: int = 64,
  num_shapes: int = 3,
  train_scenes: int = 12000,
  validation_scenes: int = 500,
  test_scenes: int = 1000,
  questions_per_type=None,
  seed: int = 0,
  *,
  spoken_questions: bool = False,
  object_sounds: bool = False,
  video_frames: int = 0,
  audio_sample_rate: int = 16000,
  train_auxiliary_questions=None,
  grounding_per_type=None,
  t2i: t2i_lib.T2IOptions | None = None,
) -> ShapesConfig:
  """A ShapesConfig whose name encodes all of its parameters.

  train_auxiliary_questions: {kind: count} of training-only questions per train scene
  (shapes.AUXILIARY_KINDS; kinds left out: 0).
  grounding_per_type: {task: count} of grounding questions per scene of every split
  (GROUNDING_TASKS; tasks left out: 0).
  t2i: the text-to-image scenes instead (``data_config``); questions_per_type is then not used."""
  q = dict(shapes.DEFAULT_QUESTIONS_PER_TYPE)
  if questions_per_type is not None:
    unknown = set(dict(questions_per_type)) - set(q)
    if unknown:
      raise ValueError(f"unknown question types {sorted(unknown)}")
    q.update({k: int(v) for k, v in dict(questions_per_type).items()})
  aux = _counts(train_auxiliary_questions, shapes.AUXILIARY_KINDS, "config.data.shapes.train_auxiliary_questions")
  grounding = _counts(grounding_per_type, GROUNDING_TASKS, "config.data.shapes.grounding_per_type")
  # Datasets keep the names they had before a kind existed: no suffix without auxiliary questions,
  # and no trailing zeros after the first three kinds (side, spatial_lean, count).
  counts = [aux[k] for k in shapes.AUXILIARY_KINDS]
  while len(counts) > 3 and counts[-1] == 0:
    counts.pop()
  aux_suffix = ("_aux" + "-".join(map(str, counts))) if any(counts) else ""
  # Likewise no suffix without grounding questions.
  g = [grounding[k] for k in GROUNDING_TASKS]
  aux_suffix += ("_g" + "-".join(map(str, g))) if any(g) else ""
  name = (
    f"s{int(image_size)}_k{int(num_shapes)}_n{int(train_scenes)}-{int(validation_scenes)}-"
    f"{int(test_scenes)}_q{q['attribute']}-{q['spatial']}-{q['relational']}{aux_suffix}_seed{int(seed)}"
    + media_suffix(spoken_questions, object_sounds, video_frames, audio_sample_rate)
  )
  if t2i is not None:
    others = {
      "train_auxiliary_questions": any(aux.values()),
      "grounding_per_type": any(grounding.values()),
      "object_sounds": object_sounds,
      "video_frames": video_frames,
      "spoken_questions": spoken_questions,
    }
    if any(others.values()):
      on = [k for k, v in others.items() if v]
      raise ValueError(f"config.data.shapes.t2i: its records hold no questions and no media; turn off {on}.")
    q = {k: 0 for k in q}  # the records hold none (data_config)
    # The relations by their first letters (l, r, a, b), in their order: it is the order they are drawn in.
    rels = "".join(r[0] for r in t2i.relations)
    frac = f"{t2i.test_held_out_fraction:g}".replace(".", "p")
    name = (
      f"s{int(image_size)}_k{int(num_shapes)}_n{int(train_scenes)}-{int(validation_scenes)}-{int(test_scenes)}"
      f"_t2i{t2i.max_objects}-{rels}-h{t2i.held_out_pairs}-{t2i.held_out_relations}-f{frac}_seed{int(seed)}"
    )
  return ShapesConfig(
    name=name,
    version="1.0.0",
    description="shapes scenes " + name,
    image_size=int(image_size),
    num_shapes=int(num_shapes),
    train_scenes=int(train_scenes),
    validation_scenes=int(validation_scenes),
    test_scenes=int(test_scenes),
    attribute_questions=q["attribute"],
    spatial_questions=q["spatial"],
    relational_questions=q["relational"],
    **{f"{k}_questions": n for k, n in aux.items()},
    **{f"{k}_questions": n for k, n in grounding.items()},
    seed=int(seed),
    spoken_questions=bool(spoken_questions),
    object_sounds=bool(object_sounds),
    video_frames=int(video_frames),
    audio_sample_rate=int(audio_sample_rate),
    **(
      {}
      if t2i is None
      else dict(
        t2i_max_objects=t2i.max_objects,
        t2i_relations=t2i.relations,
        t2i_held_out_pairs=t2i.held_out_pairs,
        t2i_held_out_relations=t2i.held_out_relations,
        t2i_test_held_out_fraction=float(t2i.test_held_out_fraction),
      )
    ),
  )


class MmjaxShapes(tfds_builders.RecordBuilder):
  """Procedural Sort-of-CLEVR scenes with captions and attribute/spatial/relational QA."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = []
  # TFDS derives code_path via importlib_resources (not always installed); our builders have no
  # checksums or other resources next to the code, so give the plain file path.
  code_path = epath.Path(__file__)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    self._check_media_tools()
    if cfg.t2i is not None:  # t2i.dataset_scenes keeps layouts unique across splits itself
      scenes = t2i_lib.dataset_scenes(cfg.t2i, cfg.seed, cfg.split_sizes, cfg.image_size, cfg.num_shapes)
      return {split: self._t2i_examples(split, s) for split, s in scenes.items()}
    # Layouts are cheap: check across-split uniqueness up front (identical layouts <=> identical
    # images, since rendering is a deterministic function of the layout).
    seen = {}
    for split, n in cfg.split_sizes.items():
      for i in range(n):
        objs = shapes.sample_objects(shapes.scene_seed(cfg.seed, split, i), cfg.image_size, cfg.num_shapes)
        key = tuple((o.shape, o.x, o.y) for o in objs)
        if key in seen and seen[key][0] != split:
          raise AssertionError(f"scene {split}/{i} duplicates {seen[key]}")
        seen.setdefault(key, (split, i))
    return {split: self._generate_examples(split, n) for split, n in cfg.split_sizes.items()}

  def _generate_examples(self, split: str, n: int):
    cfg = self.builder_config
    for i in range(n):
      # The scene's rng goes on to draw the video's velocities (after the scene, so the scene
      # itself is the same with or without video).
      rng = np.random.default_rng(shapes.scene_seed(cfg.seed, split, i))
      scene = shapes.generate_scene(
        rng,
        cfg.image_size,
        cfg.num_shapes,
        cfg.questions_per_type,
        cfg.auxiliary_per_type if split == "train" else None,
        cfg.grounding_per_type,
      )
      rid = f"{split}_{i:06d}"
      yield (
        rid,
        self._with_media(
          {
            "image": scene.image,
            "questions": scene.questions,
            "answers": scene.answers,
            "question_types": scene.question_types,
            "captions": [scene.caption],
            "id": rid,
          },
          scene_audio=(sounds.scene_sound(scene.objects, cfg.audio_sample_rate) if cfg.object_sounds else None),
          video=(
            video_lib.scene_clip(scene.objects, rng, cfg.video_frames, cfg.image_size) if cfg.video_frames else None
          ),
        ),
      )

  def _t2i_examples(self, split: str, scenes):
    size = self.builder_config.image_size
    for i, (objects, caption, _) in enumerate(scenes):
      rid = f"{split}_{i:06d}"
      yield (
        rid,
        self._with_media(
          {
            "image": shapes.render(objects, size),
            "questions": [],
            "answers": [],
            "question_types": [],
            "captions": [caption],
            "id": rid,
          }
        ),
      )


def prepare_shapes(data_dir: str, config: ShapesConfig | None = None) -> MmjaxShapes:
  """Builds (if missing) and returns the shapes builder for ``config``."""
  config = config or shapes_config()
  data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = MmjaxShapes(config=config, data_dir=data_dir)
  if not tfds_builders.is_prepared(builder):
    tfds_builders.prepare(builder, data_dir)
    builder = MmjaxShapes(config=config, data_dir=data_dir)
  return builder


def builder_config(data: ml_collections.ConfigDict) -> ShapesConfig:
  """The ShapesConfig of `config.data` (its `shapes` block and the general media keys)."""
  if "shapes" not in data:
    raise ValueError(
      "config.data.source names the shapes data, but config.data has no `shapes` block: add "
      "`config.data.shapes = mmjax.projects.shapes.data.data_config()`."
    )
  s = data.shapes
  return shapes_config(
    image_size=data.image_size,
    num_shapes=s.num_shapes,
    train_scenes=s.train_scenes,
    validation_scenes=s.validation_scenes,
    test_scenes=s.test_scenes,
    questions_per_type=dict(s.questions_per_type),
    seed=data.seed,
    spoken_questions=data.spoken_questions,
    object_sounds=s.object_sounds,
    video_frames=data.video_frames,
    audio_sample_rate=data.audio_sample_rate,
    train_auxiliary_questions=dict(s.train_auxiliary_questions),
    # Configs saved before grounding existed have no such key: no grounding questions.
    grounding_per_type=dict(s.grounding_per_type) if "grounding_per_type" in s else None,
    # Likewise configs saved before the text-to-image variant: the question scenes.
    t2i=_t2i_options(s.t2i) if "t2i" in s and s.t2i.enabled else None,
  )


def _t2i_options(block) -> t2i_lib.T2IOptions:
  return t2i_lib.T2IOptions(
    max_objects=int(block.max_objects),
    relations=tuple(block.relations),
    held_out_pairs=int(block.held_out_pairs),
    held_out_relations=int(block.held_out_relations),
    test_held_out_fraction=float(block.test_held_out_fraction),
  )


def zero_shot_trials(cfg: ShapesConfig, captions: list[str]):
  """The zero-shot task over images with these captions: for every object of every image, "what
  shape is the <color> object?" answered by scoring "a <color> <shape>" for each shape kind.
  Returns (prompts, trial_image [T] index into `captions`, candidates int [T, C] prompt indices,
  labels int [T]); the true shape comes from the image's caption. Chance is 1 / num_shapes."""
  kinds = shapes.SHAPES[: cfg.num_shapes]
  prompts = [shapes.object_phrase(c, s) for c in shapes.COLORS for s in kinds]
  trial_image, candidates, labels = [], [], []
  # A t2i caption names distinct colours too, so "the <color> object" is still one object.
  objects_of = (lambda text: t2i_lib.parse_prompt(text).objects) if cfg.t2i is not None else shapes.caption_objects
  for i, text in enumerate(captions):
    for color, shape in objects_of(text):
      trial_image.append(i)
      c = shapes.COLORS.index(color)
      candidates.append([c * len(kinds) + k for k in range(len(kinds))])
      labels.append(kinds.index(shape))
  return prompts, np.asarray(trial_image, np.int64), np.asarray(candidates, np.int64), np.asarray(labels, np.int64)


def image_scorer(cfg: ShapesConfig, prompts: list[str], images) -> dict[str, float]:
  """The t2i metrics (parse.evaluate: t2i_object_accuracy, t2i_scene_accuracy, t2i_relation_accuracy)
  of images generated from t2i prompts. Only the t2i variant's prompts are scored: the six-object
  captions name objects without the exact-parse guarantees (distinct colours) the scorer relies on,
  so other data is an error rather than a number that looks like a score."""
  if cfg.t2i is None:
    raise ValueError(
      "the shapes data scores generated images only in its text-to-image variant: "
      "set config.data.shapes.t2i.enabled=True."
    )
  from mmjax.projects.shapes import parse  # scipy: only when images are scored

  return parse.evaluate(prompts, list(images))


SOURCE = DatasetSource(
  builder_config=builder_config,
  prepare=lambda cfg, data_dir: prepare_shapes(data_dir, cfg),
  vocabulary_texts=lambda cfg: (
    shapes.vocabulary_texts(cfg.num_shapes, grounding=cfg.grounding)
    + (t2i_lib.vocabulary_texts(cfg.t2i.relations) if cfg.t2i is not None else [])
  ),
  zero_shot_trials=zero_shot_trials,
  question_template=shapes.question_template,
  image_scorer=image_scorer,
)
