"""Latent flow matching (Stable Diffusion, SD3): the DiT of t2i_flow.py runs on the latents of an image
autoencoder trained in the same run (mmjax.encoders.autoencoder: 4x4-pixel patches -> 8 channels, so a
32x32 image is an 8x8x8 latent grid, read by the DiT in 1x1 patches: 64 tokens, as the pixel DiT's).

  python experiments/train.py --workdir=/tmp/t2i_latent --config=experiments/configs/t2i_flow_latent.py
  python experiments/train.py --workdir=DIR --config=experiments/configs/t2i_flow_latent.py:tiny  # seconds

Training adds the autoencoder's reconstruction loss to the flow's (model.autoencoder_weight); the flow
reads the autoencoder's current latents as fixed targets. Sampling integrates the ODE on the latent
grid and decodes it; evaluation and sample.py are the same as for the pixel model. Measured against
the pixel DiT at the same steps in docs/results.md ("The flow-matching family").
"""

import ml_collections

from mmjax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = config_files.sibling(__file__, "t2i_flow", arg)
  m = c.model
  m.autoencoder = ml_collections.ConfigDict(dict(latent_dim=8, patch_size=4, width=64, depth=2, refine=2))
  m.dit.patch_size = 1
  if arg == "tiny":
    m.autoencoder.update(dict(latent_dim=4, patch_size=8, width=16, depth=1, refine=0))
  return c
