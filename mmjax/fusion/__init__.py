"""Fusion families behind one interface (see base.py); a config picks one by name (mmjax.registry)."""

from mmjax.fusion.base import Conditioning, Fusion, build_fusion, family

__all__ = ["Conditioning", "Fusion", "build_fusion", "family"]
