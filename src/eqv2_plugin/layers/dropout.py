"""Regularisers that respect equivariance."""
from __future__ import annotations

import torch
from torch import nn


class GraphDropPath(nn.Module):
    """Stochastic depth per graph: drops a residual branch for whole graphs.

    ``x [N, ...]``, ``batch [N]`` -> ``x`` scaled by ``mask[batch] / keep``.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.floor(keep + torch.rand(num_graphs, dtype=x.dtype, device=x.device)) / keep
        return x * mask[batch].view(-1, *([1] * (x.dim() - 1)))

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ChannelDropout(nn.Module):
    """Drops whole channels of a node (all (l, m) together): ``[N, K, C]``."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        mask = torch.nn.functional.dropout(x.new_ones(x.shape[0], 1, x.shape[2]), self.rate, True)
        return x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
