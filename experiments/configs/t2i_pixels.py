"""Text-to-image through the causal decoder, drawing pixel colours: a colour palette for tokens and one
decoder position per 4x4 patch, whose 16 pixels a small head draws one after another
(mmjax.models.pixel_tokens).

  python experiments/train.py --workdir=/tmp/t2i_pixels --config=experiments/configs/t2i_pixels.py
  python experiments/train.py --workdir=DIR --config=experiments/configs/t2i_pixels.py:tiny  # seconds, for tests

config.model.kind = "t2i_pixels" builds mmjax.models.pixel_tokens.TextToImagePixels: a palette of
4^3 = 64 colours fitted to the pixels (model.palette), a causal decoder (model.decoder) whose
vocabulary is the text's and BOI, and the pixel head (model.head). The decoder reads the caption as
its prefix; position n reads patch n - 1 (BOI first) and the head draws patch n's pixels. A tenth of
the captions are dropped to the null condition, for classifier-free guidance at sampling.

Against t2i_tokens.py's VQ codes: a code stands for a whole patch, so a colour never seen in a shape
has no code; here a pixel's colour is drawn on its own softmax, so any colour can fill any shape.
There is no tokenizer network to train, so a step costs the decoder and the head alone.

Data and evaluation as experiments/configs/t2i_flow.py: an image per caption, scored by the shapes
data's exact parser, with and without guidance.
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "tiny"):
    raise ValueError(f"t2i_pixels config takes no argument or 'tiny'; got {arg!r}.")
  c = config_files.sibling(__file__, "t2i_flow", arg)
  m = c.model
  m.kind = "t2i_pixels"
  del m["text"], m["dit"], m["t_sampling"], m["t_mean"], m["t_std"], m["autoencoder"], m["autoencoder_weight"]
  m.caption_len = c.data.max_target_len
  m.palette = ml_collections.ConfigDict(dict(levels=4, patch_size=4))  # 64 colours; 64 patches of 32x32
  # The head runs on every pixel (64 x 16 per image): at width 64 its MLP is a third of the step.
  m.head = ml_collections.ConfigDict(dict(width=64, depth=1, mlp_dim=128))
  m.palette_weight = 1.0
  m.decoder = ml_collections.ConfigDict(
    dict(width=128, depth=4, num_heads=4, mlp_dim=512, max_len=128, cross_attention_every=0)
  )
  m.cond_dropout = 0.1
  # "memory": the caption cross-attended as separate word embeddings (needs decoder.cross_attention_every=1)
  m.caption_conditioning = "prefix"
  # Each drawing position also embeds its patch's grid row and column (measured better: docs/results.md).
  m.grid_posemb = True
  # > 0: the decoder's self-attention also rotates queries and keys by each patch's grid row and column
  # (RoPE-2D at this theta), so that what a patch reads from another depends on their offset in the image.
  # Off here; on (100) in the main job, t2i.py, where it was measured (docs/results.md).
  m.grid_rope_theta = 0.0
  # How a drawn pixel enters the decoder and the pixel head: "table", a vector per (place, colour); "value",
  # its colour's RGB value through a linear map per place (mmjax.models.pixel_tokens.PIXEL_EMBEDDINGS).
  m.pixel_embedding = "table"
  m.word_dropout = 0.0  # > 0: each caption word dropped (to PAD) with this probability in training
  # Guidance acts on every pixel's logits: alone, above about 1.3 it turns pixels both models are sure of
  # into specks and breaks shapes; limited to the colours the conditional model gives at least 1% of its
  # top probability (mmjax.sample.guidance), 1.5 scores best on the validation split, and on the test
  # split it draws the held-out colour-shape pairs far more often (docs/results.md).
  # Each image the likeliest of 8 drawings under the distribution drawn from (mmjax.sample.rerank); on the
  # validation split 4, 8 and 16 score alike guided, and more candidates lower the unguided scores
  # (docs/results.md). Evaluation draws 8x the images: about 40 s of the main job.
  c.sampler.update(dict(name="top_k", top_k=2, temperature=1.0, guidance=1.5, plausibility=0.01, candidates=8))
  if arg == "tiny":
    m.palette.update(dict(levels=2, patch_size=8))
    m.head.update(dict(width=16, depth=1, mlp_dim=32))
    m.decoder.update(dict(width=32, depth=1, num_heads=2, mlp_dim=64, max_len=48))
    c.sampler.candidates = 2
  return c
