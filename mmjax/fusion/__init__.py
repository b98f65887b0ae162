"""Fusion families behind one interface (see base.py). Importing a family registers it."""
from mmjax.fusion.base import Conditioning, Fusion, FUSIONS, build_fusion, register
from mmjax.fusion import cross_attention  # noqa: F401  (registers "cross_attention")

__all__ = ["Conditioning", "Fusion", "FUSIONS", "build_fusion", "register"]
