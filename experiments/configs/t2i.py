"""The text-to-image main job on the embedded data: the discrete family (image tokens drawn by the causal
decoder, experiments/configs/t2i_tokens.py), the one that learns most in a 2-core CPU budget (measured
against the flow-matching DiT of t2i_flow.py; docs/results.md).

  python experiments/train.py --workdir=/tmp/t2i --config=experiments/configs/t2i.py
  python experiments/sample.py --workdir=/tmp/t2i --prompt="a red circle to the left of a blue square" \
      --num=8 --out=grid.png

What differs from t2i_tokens.py, for the budget (about 30 minutes on 2 CPU cores, dataset build included):
- scenes of 1 or 2 objects (data.shapes.t2i.max_objects; the captions still state a relation between
  two of them), the prompts the goal is measured on;
- the decoder trains the drawing direction alone (caption_fraction 0): the captioning direction's
  25 extra positions per row cost a fifth of every step;
- validation every 1000 steps on 128 captions; the final test on all 512.
`:tiny` is the same for tests (seconds).
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "t2i_tokens", arg)
  c.data.shapes.t2i.max_objects = 2
  c.model.caption_fraction = 0.0
  return c
