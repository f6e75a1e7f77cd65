"""Sampling spherical-harmonic coefficients on an S2 grid and projecting back.

EquiformerV2's S2 activations evaluate a signal on a (latitude x longitude)
grid, apply a pointwise function, and project back. The matrices come from
e3nn's ``ToS2Grid``/``FromS2Grid`` (``normalization="component"``), applied to
unit inputs, so the grid points and quadrature weights are exactly e3nn's.

Grid size: ``resolution`` if given (the released configs use 18, i.e. 18x18),
else ``2(lmax+1)`` latitudes and ``2(mmax+1)+1`` (if lmax == mmax) or
``2 mmax + 1`` longitudes. When only ``|m| <= mmax`` coefficients are present,
degrees ``l > mmax`` are scaled by the truncation rescale (see ``layout``).
"""
from __future__ import annotations

from functools import lru_cache

import torch

from eqv2_plugin.so3._float64 import float64_default
from eqv2_plugin.so3.layout import degree_of_node_coefficients, truncation_rescale


def grid_shape(lmax: int, mmax: int, resolution: int | None) -> tuple[int, int]:
    """(latitudes, longitudes) of the grid used for a (lmax, mmax) signal."""
    if resolution is not None:
        return resolution, resolution
    lat = 2 * (lmax + 1)
    lon = 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1
    return lat, lon


@lru_cache(maxsize=None)
def _grid_matrices_cpu64(lmax: int, mmax: int, resolution: int | None):
    from e3nn.o3 import FromS2Grid, ToS2Grid

    lat, lon = grid_shape(lmax, mmax, resolution)
    n = (lmax + 1) ** 2
    with float64_default():
        to_grid = ToS2Grid(lmax, (lat, lon), normalization="component", dtype=torch.float64)
        from_grid = FromS2Grid((lat, lon), lmax, normalization="component", dtype=torch.float64)
        eye = torch.eye(n, dtype=torch.float64)
        to_mat = to_grid(eye).reshape(n, lat * lon).t().contiguous()  # [G, n]
        deltas = torch.eye(lat * lon, dtype=torch.float64).reshape(lat * lon, lat, lon)
        from_mat = from_grid(deltas).t().contiguous()  # [n, G]
    scale = torch.tensor(
        [truncation_rescale(int(l), mmax) for l in degree_of_node_coefficients(lmax)],
        dtype=torch.float64,
    )
    return to_mat * scale[None, :], from_mat * scale[:, None]


def s2_grid_matrices(
    lmax: int, mmax: int, resolution: int | None, coefficients: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64 projection matrices for a degree-``lmax`` signal truncated at ``mmax``.

    Args:
        coefficients: node-layout indices of the coefficients present, in the
            order the features store them (default: all ``(lmax+1)**2``).

    Returns:
        ``to_grid [G, K]`` (values at the G grid points) and ``from_grid [K, G]``
        (quadrature back to coefficients), including the truncation rescale.
    """
    to_mat, from_mat = _grid_matrices_cpu64(lmax, mmax, resolution)
    if coefficients is not None:
        to_mat = to_mat[:, coefficients]
        from_mat = from_mat[coefficients, :]
    return to_mat.clone(), from_mat.clone()
