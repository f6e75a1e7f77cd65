"""Computing constant tables in float64 whatever the caller's default dtype.

e3nn builds some of its constants with ``torch.get_default_dtype()`` even when
asked for float64; the tables we cache must not depend on which dtype happened
to be the default at the first call.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
