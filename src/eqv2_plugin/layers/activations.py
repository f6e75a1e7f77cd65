"""Nonlinearities for equivariant features ``[*, K, C]`` (K coefficients, any layout
whose first coefficient is the l=0 one).

* gate activation: SiLU on l=0, every l>0 degree scaled by a sigmoid gate
  computed from invariant scalars;
* S2 activation: sample on an S2 grid, SiLU pointwise, project back;
* separable S2 activation (EquiformerV2): l=0 output = SiLU of separate
  scalars, l>0 outputs from the S2 activation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eqv2_plugin.escn.grid_activation import grid_silu


class SmoothLeakyReLU(nn.Module):
    """``x (1+a)/2 + x (1-a)/2 (2 sigmoid(x) - 1)``: a smooth leaky ReLU (a = 0.2)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return ((1 + a) / 2) * x + ((1 - a) / 2) * x * (2 * torch.sigmoid(x) - 1)


class GateActivation(nn.Module):
    """``gates [*, lmax*C]``, ``x [*, K, C]`` -> ``[*, K, C]``.

    ``degrees [K]`` gives the degree of each coefficient (degree 0 only at position 0).
    """

    def __init__(self, degrees: torch.Tensor, lmax: int):
        super().__init__()
        self.lmax = lmax
        self.register_buffer("gate_index", (degrees[1:] - 1).clone(), persistent=False)

    def forward(self, gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(gates).reshape(*gates.shape[:-1], self.lmax, x.shape[-1])
        l0, rest = x.split([1, x.shape[-2] - 1], dim=-2)
        return torch.cat([F.silu(l0), rest * g[..., self.gate_index, :]], dim=-2)


class S2Activation(nn.Module):
    """SiLU applied pointwise on an S2 grid: ``[*, K, C] -> [*, K, C]``.

    ``to_grid [G, K]`` and ``from_grid [K, G]`` come from ``so3.s2_grid_matrices``.
    """

    def __init__(self, to_grid: torch.Tensor, from_grid: torch.Tensor):
        super().__init__()
        dtype = torch.get_default_dtype()
        self.register_buffer("to_grid", to_grid.to(dtype), persistent=False)
        self.register_buffer("from_grid", from_grid.to(dtype), persistent=False)

    def forward(self, x: torch.Tensor, ops=None) -> torch.Tensor:
        """``ops``: an ``escn.backend.EscnOps`` (default: the chunked torch path, which
        recomputes the grid in the backward pass instead of keeping ``[*, G, C]``)."""
        if ops is None:
            return grid_silu(x, self.to_grid, self.from_grid)
        return ops.grid_silu(x, self.to_grid, self.from_grid)


class SeparableS2Activation(nn.Module):
    """``scalars [*, C]``, ``x [*, K, C]`` -> ``[*, K, C]``: SiLU(scalars) as l=0, S2 activation for l>0."""

    def __init__(self, to_grid: torch.Tensor, from_grid: torch.Tensor):
        super().__init__()
        self.s2 = S2Activation(to_grid, from_grid)

    def forward(self, scalars: torch.Tensor, x: torch.Tensor, ops=None) -> torch.Tensor:
        return torch.cat([F.silu(scalars).unsqueeze(-2), self.s2(x, ops)[..., 1:, :]], dim=-2)
