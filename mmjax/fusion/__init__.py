"""Fusion families behind one interface (see base.py). Importing a family registers it."""
from mmjax.fusion.base import Conditioning, Fusion, FUSIONS, build_fusion, register
# Imported for their side effect: each registers its family name in FUSIONS.
from mmjax.fusion import cross_attention, prefix_lm, flamingo, qformer  # noqa: F401,E402

__all__ = ["Conditioning", "Fusion", "FUSIONS", "build_fusion", "register"]
