"""Hand-written accelerator kernels, installed as `mmjax.kernels`.

This is the lowest floor of mmjax: nothing here imports the rest of the library. GPU-only modules
(triton, jax-triton) are imported lazily by the functions that need them, so `import mmjax.kernels`
works on a CPU-only machine.
"""

from mmjax.kernels.mask import (
  TILE_EMPTY,
  TILE_FULL,
  TILE_PARTIAL,
  MaskSpec,
  heaviest_first,
  tile_map,
  tile_runs,
  tile_spans,
)

__all__ = [
  "MaskSpec",
  "heaviest_first",
  "tile_map",
  "tile_runs",
  "tile_spans",
  "TILE_EMPTY",
  "TILE_PARTIAL",
  "TILE_FULL",
]
