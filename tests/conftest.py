"""Session-wide test set-up.

Without a GPU, the Triton kernels are tested in triton's interpreter. ``TRITON_INTERPRET``
must be set before triton is first imported (its own library functions such as ``tl.zeros``
are compiled-mode objects otherwise), and some test modules import triton indirectly at
collection time, so it is set here, before any test module is collected.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
