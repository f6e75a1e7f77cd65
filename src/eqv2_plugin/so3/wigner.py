"""Wigner-D matrices of real spherical harmonics (e3nn's basis) from rotation matrices.

``wigner_blocks(R, lmax)`` returns ``D^l(R)`` for ``l = 0..lmax``, the matrices
with ``Y_l(R x) = D^l(R) Y_l(x)`` in e3nn's real basis, whose l=1 harmonics are
ordered (x, y, z) so that ``D^1(R) = R``. They are built directly from the 3x3
matrix, without Euler angles: ``D^l`` follows from the coupling
``D^l = C_l^T (D^{l-1} (x) D^1) C_l`` with ``C_l`` the normalised
Clebsch-Gordan (Wigner 3j) coefficients of ``(l-1) x 1 -> l``. This is a
polynomial in the entries of R: exact (no angle singularities at the poles),
smooth and differentiable, which gradient forces rely on. Any degree is
supported; the coupling tensors are computed once per (l, dtype, device).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from eqv2_plugin.so3._float64 import float64_default

MAX_SUPPORTED_LMAX = 12


@lru_cache(maxsize=None)
def _coupling_cpu64(l: int) -> torch.Tensor:
    """``[2l-1, 3, 2l+1]`` float64: orthonormal coupling (l-1) x 1 -> l."""
    from e3nn import o3

    with float64_default():
        c = o3.wigner_3j(l - 1, 1, l, dtype=torch.float64)
    return c * math.sqrt(2 * l + 1)


def coupling(l: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return _coupling_cpu64(l).to(dtype=dtype, device=device)


def wigner_blocks(rot: torch.Tensor, lmax: int) -> list[torch.Tensor]:
    """Wigner-D blocks ``[E, 2l+1, 2l+1]`` for ``l = 0..lmax`` of rotations ``rot [E, 3, 3]``."""
    if lmax > MAX_SUPPORTED_LMAX:
        raise ValueError(f"lmax={lmax} exceeds the supported maximum {MAX_SUPPORTED_LMAX}")
    n = rot.shape[0]
    d1 = rot  # l=1 coefficients are Cartesian (x, y, z) in e3nn's basis
    blocks = [rot.new_ones(n, 1, 1)]
    if lmax >= 1:
        blocks.append(d1)
    for l in range(2, lmax + 1):
        prev = blocks[-1]
        c = coupling(l, rot.dtype, rot.device)  # [2l-1, 3, 2l+1]
        a, k = 2 * l - 1, 2 * l + 1
        u = torch.matmul(prev, c.reshape(a, 3 * k)).reshape(n, a, 3, k)  # sum over prev's column
        v = torch.einsum("ebd,eadk->eabk", d1, u)
        blocks.append(torch.matmul(c.reshape(a * 3, k).t(), v.reshape(n, a * 3, k)))
    return blocks
