"""Session-wide test set-up.

Without a GPU, the Triton kernels are tested in triton's interpreter. ``TRITON_INTERPRET``
must be set before triton is first imported (its own library functions such as ``tl.zeros``
are compiled-mode objects otherwise), and some test modules import triton indirectly at
collection time, so it is set here, before any test module is collected.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _recomputation_checked(monkeypatch):
    """The model skips torch.utils.checkpoint's comparison of each recomputation with its first
    pass (host time on a GPU, see ``model/recompute.py``); tests keep it on, so that a
    recomputation that differs (shape, dtype, device of a saved tensor) fails here."""
    from eqv2_plugin.model import recompute

    monkeypatch.setattr(recompute, "DETERMINISM_CHECK", "default")
