"""Degree-wise linear map: one weight matrix per degree l, shared by all its m."""
from __future__ import annotations

import math

import torch
from torch import nn


class DegreeWiseLinear(nn.Module):
    """``[N, (lmax+1)**2, C_in] -> [N, (lmax+1)**2, C_out]``; bias on l=0 only (equivariance).

    Parameters: ``weight [lmax+1, C_out, C_in]``, ``bias [C_out]``.
    """

    def __init__(self, in_channels: int, out_channels: int, lmax: int):
        super().__init__()
        self.in_features = in_channels
        self.out_features = out_channels
        self.lmax = lmax
        bound = 1.0 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = torch.split(x, [2 * l + 1 for l in range(self.lmax + 1)], dim=1)
        weights = self.weight.unbind(0)
        out = [torch.matmul(b, w.t()) for b, w in zip(blocks, weights)]
        out[0] = out[0] + self.bias
        return torch.cat(out, dim=1)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, lmax={self.lmax}"
