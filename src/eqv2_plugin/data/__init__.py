"""Synthetic OC20-like data for the fairchem 1.x trainer (``eqv2-plugin make-data``).

Importing this package is cheap; ``generate_dataset`` and ``summarize`` are
loaded on first use (they pull in ASE, torch and fairchem when they run).
"""
from __future__ import annotations

from typing import Any

__all__ = ["generate_dataset", "summarize"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from eqv2_plugin.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
