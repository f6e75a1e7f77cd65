"""Coefficient layouts: the single source of truth for how (l, m) are indexed.

Two layouts are used, both for real spherical harmonics in e3nn's basis:

* **node layout** (l-major): all ``(lmax+1)**2`` coefficients, index
  ``l*l + l + m`` for ``m = -l..l``. Node features are ``[N, (lmax+1)**2, C]``.
* **edge layout** (m-major, truncated at ``|m| <= mmax``): what the eSCN SO(2)
  convolutions see once features are rotated into an edge frame. Order::

      m=0 : l = 0..lmax                    (lmax+1 rows)
      m=1 : +1 for l = 1..lmax, then -1 for l = 1..lmax
      ...
      m=mmax : +mmax for l = mmax..lmax, then -mmax for l = mmax..lmax

  so each order ``m > 0`` is a contiguous ``[2, lmax-m+1]`` block whose two
  rows are the "real" (+m) and "imaginary" (-m) parts of a complex
  coefficient. Edge features are ``[E, K, C]`` with ``K = num_edge_coefficients``.

Dropping the ``|m| > mmax`` rows loses norm for ``l > mmax``; rotating back and
projecting to the S2 grid multiply those degrees by
``sqrt((2l+1) / (2*mmax+1))`` (EquiformerV2's normalisation, equivariance is
unaffected). ``EdgeLayout.rescale`` holds that factor per edge coefficient.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch


def num_node_coefficients(lmax: int) -> int:
    """Number of coefficients of a degree-``lmax`` node feature: ``(lmax+1)**2``."""
    return (lmax + 1) ** 2


def node_index(l: int, m: int) -> int:
    """Position of ``(l, m)`` in the node (l-major) layout."""
    return l * l + l + m


def degree_of_node_coefficients(lmax: int) -> torch.Tensor:
    """``[(lmax+1)**2]`` long tensor: the degree ``l`` of each node coefficient."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


@dataclass(frozen=True)
class EdgeLayout:
    """The truncated m-major layout of features in an edge frame (see module docstring)."""

    lmax: int
    mmax: int

    def __post_init__(self) -> None:
        if not 0 <= self.mmax <= self.lmax:
            raise ValueError(f"need 0 <= mmax <= lmax, got lmax={self.lmax}, mmax={self.mmax}")

    @cached_property
    def lm(self) -> list[tuple[int, int]]:
        """``(l, m)`` of each edge coefficient, in edge-layout order."""
        out = [(l, 0) for l in range(self.lmax + 1)]
        for m in range(1, self.mmax + 1):
            out += [(l, m) for l in range(m, self.lmax + 1)]
            out += [(l, -m) for l in range(m, self.lmax + 1)]
        return out

    @property
    def num_coefficients(self) -> int:
        """K: the number of edge coefficients."""
        return len(self.lm)

    def m_size(self, m: int) -> int:
        """Rows per sign of order ``m``: ``lmax - m + 1``."""
        return self.lmax - m + 1

    def m_offset(self, m: int) -> int:
        """First edge coefficient of order ``m`` (the +m block, followed by the -m block)."""
        if m == 0:
            return 0
        return self.lmax + 1 + sum(2 * self.m_size(k) for k in range(1, m))

    @cached_property
    def node_index(self) -> torch.Tensor:
        """``[K]`` long: the node-layout index of each edge coefficient."""
        return torch.tensor([node_index(l, m) for l, m in self.lm], dtype=torch.long)

    @cached_property
    def degree(self) -> torch.Tensor:
        """``[K]`` long: the degree ``l`` of each edge coefficient."""
        return torch.tensor([l for l, _ in self.lm], dtype=torch.long)

    def rescale(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``[K]``: ``sqrt((2l+1)/(2*mmax+1))`` for ``l > mmax``, else 1."""
        return torch.tensor(
            [truncation_rescale(l, self.mmax) for l, _ in self.lm], dtype=dtype
        )


def truncation_rescale(l: int, mmax: int) -> float:
    """Norm compensation for degree ``l`` when only orders ``|m| <= mmax`` are kept."""
    return math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0
