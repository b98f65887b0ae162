"""Text-to-image through the causal decoder: a VQ tokenizer's image codes drawn token by token.

  python experiments/train.py --workdir=/tmp/t2i_tokens --config=experiments/configs/t2i_tokens.py
  python experiments/train.py --workdir=DIR --config=experiments/configs/t2i_tokens.py:tiny  # seconds, for tests

config.model.kind = "t2i_tokens" builds mmjax.models.image_tokens.TextToImageTokens: a VQ tokenizer
(model.image_tokenizer: 4x4-pixel patches -> one of 512 codes, 64 codes per 32x32 image) and a causal
decoder (model.decoder) whose vocabulary is the text's, the codes' and BOI. The decoder reads the
caption as its prefix and draws the 64 codes after BOI; a fifth of the rows train the other direction
(the image's codes, then its caption), so the same decoder also captions. Both parts train together in
one run (the decoder's targets are the tokenizer's current codes). A tenth of the captions are dropped
to the null condition, for classifier-free guidance at sampling (config.sampler: top-k 8, guidance 3).

Evaluation as experiments/configs/t2i_flow.py: an image per caption, scored by the shapes data's exact
parser, with and without guidance.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "tiny"):
    raise ValueError(f"t2i_tokens config takes no argument or 'tiny'; got {arg!r}.")
  c = config_files.sibling(__file__, "t2i_flow", arg)
  m = c.model
  m.kind = "t2i_tokens"
  del m["text"], m["dit"], m["t_sampling"], m["t_mean"], m["t_std"]
  m.caption_len = c.data.max_target_len
  m.image_tokenizer = ml_collections.ConfigDict(
    dict(codebook_size=512, code_dim=16, patch_size=4, width=64, depth=2, refine=2, commitment=0.25, recon_every=1)
  )
  # quantizer "fsq": finite scalar codes (codebook_size = prod(fsq_levels)); with it, factored_codes
  # makes a code's embedding and logit sums over its digits (mmjax.models.image_tokens). Trained jointly,
  # FSQ codes keep flipping: pair it with model.freeze_after = {"image_tokenizer": N}. On the shapes
  # scenes the factored drawing measured far worse than whole codes (docs/results.md, "Text-to-image").
  m.image_tokenizer.quantizer = "vq"
  m.image_tokenizer.fsq_levels = (8, 5, 5, 5)
  m.factored_codes = False
  m.decoder = ml_collections.ConfigDict(dict(width=128, depth=4, num_heads=4, mlp_dim=512, max_len=128))
  # "causal": codes drawn one by one in raster order (KV cache); "masked": MaskGIT, the image block read
  # bidirectionally and filled in config.sampler.steps parallel steps, the surest codes first (on the
  # main job's CPU budget it learns far less than causal: docs/results.md).
  m.image_decoding = "causal"
  m.cond_dropout = 0.1
  m.caption_fraction = 0.2  # rows that learn to caption (image codes, then the caption)
  m.vq_weight = 1.0
  c.sampler.update(dict(name="top_k", top_k=8, temperature=1.0, guidance=3.0))
  if arg == "tiny":
    m.image_tokenizer.update(dict(codebook_size=32, code_dim=8, patch_size=8, width=16, depth=1, fsq_levels=(4, 4, 2)))
    m.decoder.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64, max_len=72))
  return c
