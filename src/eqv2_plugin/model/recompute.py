"""Recomputation in the backward pass (``torch.utils.checkpoint``), one policy for the model.

Used by the attention (its edge messages), the FFN (its grid MLP) and, with
``activation_checkpoint``, whole blocks and the force head.

``DETERMINISM_CHECK``: ``checkpoint`` can record the shape, dtype and device of every tensor
saved by the first forward pass and compare them with the recomputation's (``"default"``).
That bookkeeping is Python objects per saved tensor, made on the host that launches the GPU's
work: without it an 83M training step on an H200 (8 systems, ``benchmarks/gpu/variants.py``)
triggers a quarter fewer garbage collections (48 instead of 64 over 8 steps); its time moved
by -9 % in one run and within the noise in another (fp32 0.345 -> 0.342 s).
The recomputed functions are the same code on the same inputs, so the model runs without the
check; the test suite turns it on (``tests/conftest.py``), so that a recomputation that
differs from its first pass still fails there.
"""
from __future__ import annotations

from typing import Any, Callable

from torch.utils.checkpoint import checkpoint

DETERMINISM_CHECK = "none"


def recompute_in_backward(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, keeping only ``args`` for the backward pass, which calls ``fn`` again."""
    return checkpoint(fn, *args, use_reentrant=False, determinism_check=DETERMINISM_CHECK)
