"""The eSCN hot path in plain PyTorch: the CPU default and the reference for the kernels.

Tuned for CPU: one batched GEMM per rotation with the compact Wigner rows,
``index_add`` reductions (deterministic on CPU), and the chunked grid SiLU
that recomputes the grid in its backward pass instead of storing it.
"""
from __future__ import annotations

import torch

from eqv2_plugin.escn.edges import EdgeSegments
from eqv2_plugin.escn.grid_activation import grid_silu
from eqv2_plugin.escn.rotation import EdgeRotation


def weight_by_head(values: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``values [E, K, H*V] * alpha [E, H]`` per head."""
    E, K, C = values.shape
    H = alpha.shape[1]
    return (values.reshape(E, K, H, C // H) * alpha[:, None, :, None]).reshape(E, K, C)


class TorchOps:
    """``EscnOps`` in plain PyTorch (see ``escn.backend``)."""

    name = "torch"

    def gather_rotate(self, x: torch.Tensor, rotation: EdgeRotation, edges: EdgeSegments) -> torch.Tensor:
        return rotation.to_edge(torch.cat([x[edges.source], x[edges.target]], dim=2))

    def rotate_scatter(
        self,
        values: torch.Tensor,
        rotation: EdgeRotation,
        edges: EdgeSegments,
        alpha: torch.Tensor | None,
        num_nodes: int,
    ) -> torch.Tensor:
        if alpha is not None:
            values = weight_by_head(values, alpha)
        per_edge = rotation.from_edge(values)  # [E, S, C]
        out = per_edge.new_zeros(num_nodes, per_edge.shape[1], per_edge.shape[2])
        return out.index_add(0, edges.target, per_edge)

    def grid_silu(self, x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
        return grid_silu(x, to_grid, from_grid)


TORCH_OPS = TorchOps()
