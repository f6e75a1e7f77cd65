"""eqv2-plugin: EquiformerV2 for the fairchem-core 1.x (OCP) trainer.

Importing the package is light and needs neither fairchem nor e3nn; the model
classes are loaded on first access, so fairchem YAML can name them by dotted
path (``model: {name: eqv2_plugin.EquiformerV2}``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "EquiformerV2": "eqv2_plugin.model.equiformer_v2",
    "EquiformerV2Backbone": "eqv2_plugin.model.equiformer_v2",
    "EquiformerV2EnergyHead": "eqv2_plugin.model.equiformer_v2",
    "EquiformerV2ForceHead": "eqv2_plugin.model.equiformer_v2",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eqv2_plugin' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
