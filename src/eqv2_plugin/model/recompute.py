"""Recomputation in the backward pass (``torch.utils.checkpoint``), one policy for the model.

Used by the attention (its edge messages), the FFN (its grid MLP) and, with
``activation_checkpoint``, whole blocks and the force head. On a GPU the attention keeps its
first SO(2) convolution's outputs (``keep_linear_outputs``): the backward pass then rebuilds
that convolution's inputs (gather, rotation, radial weights) without its GEMMs, the largest
FLOPs of a layer.

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

import contextvars
from typing import Any, Callable

from torch.utils.checkpoint import checkpoint

from eqv2_plugin.layers.kept_linear import KeptOutputs, keeping_linear_outputs

DETERMINISM_CHECK = "none"
_INSIDE_REGION: contextvars.ContextVar[bool] = contextvars.ContextVar("inside_recomputed_region", default=False)


def recompute_in_backward(fn: Callable[..., Any], *args: Any, keep_linear_outputs: bool = False) -> Any:
    """``fn(*args)``, keeping only ``args`` for the backward pass, which calls ``fn`` again.

    ``keep_linear_outputs``: also keep the outputs of ``layers.kept_linear.linear`` calls inside
    ``fn``, so that the backward pass's call rebuilds their inputs but does not redo those GEMMs.
    """
    # Nested in another region (``activation_checkpoint`` blocks), outputs kept by the outer
    # region's first run would be held to its backward pass and never replayed: keep none there.
    nested = _INSIDE_REGION.get()
    kept = KeptOutputs() if keep_linear_outputs and not nested else None

    def run(*inner: Any) -> Any:
        token = _INSIDE_REGION.set(True)
        try:
            with keeping_linear_outputs(kept):
                return fn(*inner)
        finally:
            _INSIDE_REGION.reset(token)

    return checkpoint(run, *args, use_reentrant=False, determinism_check=DETERMINISM_CHECK)
