"""Text-to-image through the causal decoder, drawing pixel colours: a colour palette for tokens and one
decoder position per 4x4 patch, whose 16 pixels a small head draws one after another
(mmjax.models.pixel_tokens). The data, captions and evaluation are the main job's (t2i.py).

  python experiments/train.py --workdir=/tmp/t2i_pixels --config=experiments/configs/t2i_pixels.py
  python experiments/sample.py --workdir=/tmp/t2i_pixels --prompt="a red circle to the left of a blue square" \
      --num=8 --out=grid.png
  python experiments/train.py --workdir=DIR --config=experiments/configs/t2i_pixels.py:tiny  # seconds, for tests

Against t2i.py's VQ codes: a VQ code stands for a whole patch, so a colour never seen in a shape has
no code; a pixel's colour is drawn on its own softmax, so any colour can fill any shape. There is no
tokenizer network to train (the palette is 64 colours fitted to the pixels), so a step costs the
decoder alone.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "t2i", arg)
  m = c.model
  m.kind = "t2i_pixels"
  for key in ("image_tokenizer", "factored_codes", "image_decoding", "caption_fraction", "vq_weight"):
    del m[key]
  m.palette = ml_collections.ConfigDict(dict(levels=4, patch_size=4))  # 4^3 = 64 colours, 64 patches
  # The head runs on every pixel (64 x 16 per image): at width 64 its MLP is a third of the step.
  m.head = ml_collections.ConfigDict(dict(width=64, depth=1, mlp_dim=128))
  m.palette_weight = 1.0
  m.decoder.max_len = 1 + m.caption_len + 64
  if arg == "tiny":
    m.palette.update(dict(levels=2, patch_size=8))
    m.head.update(dict(width=16, depth=1, mlp_dim=32))
    m.decoder.max_len = 1 + m.caption_len + 16
  return c
