"""Grounding on the embedded data: the general default model trained on the grounding tasks
(mmjax.data.tasks.GROUNDING_TASKS) with location tokens, PaliGemma / Kosmos-2 style.

  python experiments/train.py --workdir=DIR --config=experiments/configs/grounding.py

Every scene gets, per split: referring expressions ("detect the red circle" -> its box), a detection
("detect circle ; square" -> every such box with its label), the caption with each object phrase
followed by its box, and questions answered by an object with its box. metrics.jsonl gets
`<split>/refer_acc50`, `refer_miou`, `detect_map50`, `grounded_caption_acc` and `grounded_vqa_acc`
(docs/results.md has the measured numbers). Nothing here is specific to the shapes data but its
`shapes` block: `--config.data.manifest=FILE` trains the same model on a manifest's "boxes".
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "default", arg)
  c.total_steps = 4000  # about 2.9 steps/s on 2 CPU cores: about 27 minutes with the dataset build (budget: 30)
  c.eval_every = 2000
  c.eval_max_examples = 500

  # One location token per pixel of the 64-pixel images: a box's corners are exact to half a pixel,
  # which keeps an object of about 9 pixels above IoU 0.8 when every corner lands in its bin.
  c.data.location_bins = 64
  # The grounding examples only: each scene's boxes are what is learnt and scored.
  c.data.shapes.questions_per_type = {"attribute": 0, "spatial": 0, "relational": 0}
  c.data.shapes.grounding_per_type = {"refer": 2, "detect": 1, "grounded_caption": 1, "grounded_vqa": 1}
  c.data.captions = False  # the grounded caption carries the caption's words
  # No VQA questions to group: the images are shared through examples_per_image below.
  c.data.questions_per_image = 1
  c.data.captions_with_questions = False
  # Every train batch is 32 images, each with all of its grounding examples (2 referring expressions,
  # a detection, a grounded caption, a grounded question): the image is encoded once for its five
  # examples, about twice the examples per second of one-task batches of 64 images (2.86 x 160
  # against 3.23 x 64, docs/results.md), and every step learns every task.
  c.data.examples_per_image.update(dict(refer=2, detect=1, grounded_caption=1, grounded_vqa=1))
  c.batch_size = 160
  # A grounded caption is six phrases, each with 4 location tokens and its position words.
  c.data.max_target_len = 128
  c.model.decoder.max_len = c.data.max_prompt_len + c.data.max_target_len
  # Location tokens are ordered, unlike words: their embeddings start ordered (sin-cos, neighbouring
  # bins alike) and a target is spread over its neighbours (a Gaussian of 1.5 bins), so that a near
  # miss is taught as nearly right (short ablation runs in docs/results.md).
  c.model.decoder.location_embedding = "sincos"
  c.model.decoder.location_label_sigma = 1.5
  # Finding "the red triangle" needs tokens that keep their pixels' colours and their objects'
  # outlines: the default's hypercolumn stem does (default.py). With the conv stem alone (a linear
  # probe of the trained tokens: colour 0.36 of 6 colours, shape 0.61 of 3) test referring Acc@0.5,
  # detection mAP and grounded captions were 0.38 / 0.05 / 0.04 at seed 0; with it 0.97 / 0.78 / 0.98
  # (detections then grouped by label; docs/results.md).
  return c
